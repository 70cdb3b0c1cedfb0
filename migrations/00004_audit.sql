-- The operators' audit trail: every requeue, discard and resend, from the CLI
-- or the web console, with who did it. Names are unqualified (see 00001).

-- +goose Up
CREATE TABLE audit_log (
    id       bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    operator text        NOT NULL,             -- database role and, if given, the operator's name
    source   text        NOT NULL,             -- cli | console
    action   text        NOT NULL,             -- requeue | discard | resend
    row_ids  bigint[]    NOT NULL,
    detail   text                              -- the filter or reason, as the operator gave it
);

CREATE INDEX audit_log_at_idx ON audit_log (at);

-- +goose Down
DROP TABLE audit_log;
