package main

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/internal/layout"
	"github.com/outboxrelay/relay/relay"
	"github.com/outboxrelay/relay/retry"
)

// envPrefix starts the name of every environment variable the relay reads.
const envPrefix = "RELAY_"

// defaultDatabaseURL is the local development Postgres.
const defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// Config is the relay's configuration, read from RELAY_* environment
// variables. Each field's env tag names its variable (after the prefix),
// envDefault is its default and desc is the one-line description of the
// README table ("relay help config" prints that table). An unset or empty
// variable takes the default.
type Config struct {
	// DatabaseURL is the Postgres connection string, as a URL or as
	// key=value pairs. Default: the local development server,
	// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable.
	DatabaseURL string `env:"DATABASE_URL" envDefault:"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable" desc:"Postgres connection string (URL or key=value pairs). Never logged with its password."`
	// DatabaseURLFile is the path of a file holding the connection
	// string (a mounted secret); a trailing newline is ignored. When set,
	// it wins over DatabaseURL. Default: unset.
	DatabaseURLFile string `env:"DATABASE_URL_FILE" desc:"Path of a file holding the connection string (e.g. a mounted secret); trailing newline ignored. Wins over RELAY_DATABASE_URL."`
	// KafkaBrokers are the seed brokers, host:port each. Default
	// localhost:9092.
	KafkaBrokers []string `env:"KAFKA_BROKERS" envDefault:"localhost:9092" desc:"Comma-separated Kafka seed brokers, host:port each."`
	// KafkaTLS connects to the brokers over TLS. Every other KAFKA_TLS_*
	// variable requires it: TLS is never turned on implicitly. Default
	// false.
	KafkaTLS bool `env:"KAFKA_TLS" envDefault:"false" desc:"Connect to Kafka over TLS. The other RELAY_KAFKA_TLS_* variables require it to be true."`
	// KafkaTLSCAFile is a PEM file of the CAs that verify the brokers'
	// certificates. Default: unset, the system's roots.
	KafkaTLSCAFile string `env:"KAFKA_TLS_CA_FILE" desc:"PEM file of the CA certificates that verify the brokers; empty: the system roots."`
	// KafkaTLSCertFile is the PEM client certificate for mutual TLS;
	// it needs KafkaTLSKeyFile. Default: unset, no client certificate.
	KafkaTLSCertFile string `env:"KAFKA_TLS_CERT_FILE" desc:"PEM client certificate for mutual TLS; set together with RELAY_KAFKA_TLS_KEY_FILE."`
	// KafkaTLSKeyFile is the PEM private key of KafkaTLSCertFile.
	// Default: unset.
	KafkaTLSKeyFile string `env:"KAFKA_TLS_KEY_FILE" desc:"PEM private key of the client certificate; set together with RELAY_KAFKA_TLS_CERT_FILE."`
	// KafkaTLSServerName is the host name the brokers' certificates must
	// hold. Default: unset, each broker's own host.
	KafkaTLSServerName string `env:"KAFKA_TLS_SERVER_NAME" desc:"Host name the brokers' certificates must hold; empty: the host of each broker address."`
	// KafkaTLSInsecureSkipVerify accepts any broker certificate; a
	// warning is logged at start. Default false.
	KafkaTLSInsecureSkipVerify bool `env:"KAFKA_TLS_INSECURE_SKIP_VERIFY" envDefault:"false" desc:"Accept any broker certificate, unverified (for tests only; logged as a warning)."`
	// KafkaSASLMechanism is PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or
	// AWS_MSK_IAM (any case). The first three need a username and a
	// password; AWS_MSK_IAM takes the standard AWS_* credential variables
	// instead (see kafka_security.go). Default: unset, no SASL.
	KafkaSASLMechanism string `env:"KAFKA_SASL_MECHANISM" desc:"SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (need a username and a password), or AWS_MSK_IAM (needs AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN if temporary); empty: no SASL."`
	// KafkaSASLUsername is the SASL user. Default: unset.
	KafkaSASLUsername string `env:"KAFKA_SASL_USERNAME" desc:"SASL username."`
	// KafkaSASLPassword is the SASL password, never logged. Default:
	// unset.
	KafkaSASLPassword string `env:"KAFKA_SASL_PASSWORD" desc:"SASL password. Never logged."`
	// KafkaSASLPasswordFile is the path of a file holding the SASL
	// password (a mounted secret); a trailing newline is ignored. When
	// set, it wins over KafkaSASLPassword. Default: unset.
	KafkaSASLPasswordFile string `env:"KAFKA_SASL_PASSWORD_FILE" desc:"Path of a file holding the SASL password (e.g. a mounted secret); trailing newline ignored. Wins over RELAY_KAFKA_SASL_PASSWORD."`
	// KafkaAWSUserAgent is the user agent AWS_MSK_IAM signs, which IAM
	// policies can match with the aws:UserAgent condition key. Default:
	// unset, franz-go's "franz-go/<Go version>/<hostname>".
	KafkaAWSUserAgent string `env:"KAFKA_AWS_USER_AGENT" desc:"User agent sent with AWS_MSK_IAM, for IAM policies that match aws:UserAgent; empty: franz-go/<Go version>/<hostname>."`
	// KafkaCompression is the codec of produced record batches: none,
	// gzip, snappy, lz4 or zstd. Default snappy (the Kafka client's).
	KafkaCompression string `env:"KAFKA_COMPRESSION" envDefault:"snappy" desc:"Codec of produced record batches: none, gzip, snappy, lz4 or zstd. snappy and lz4 are cheap on CPU; zstd compresses best (Kafka 2.1 or later); gzip costs the most CPU; none for incompressible payloads. Consumers decompress on their own."`
	// Schemas are the Postgres schemas holding outbox tables, one outbox
	// each (one per tenant, say): the daemon runs a relay for each, side
	// by side. Default outbox.
	Schemas []string `env:"SCHEMA" envDefault:"outbox" desc:"Postgres schema of the outbox tables: lower-case letters, digits, underscores. A comma-separated list runs one relay per schema in this process (one outbox per tenant, say); the commands that act on one outbox then want --outbox."`
	// The Debezium outbox table to take over (docs/migrating-from-debezium.md)
	// and its column names, as Debezium's outbox event router names them.
	// Default: none.
	DebeziumTable                   string `env:"DEBEZIUM_TABLE" desc:"Debezium outbox table (schema.table) whose inserts a trigger copies into the outbox, routed as Debezium's outbox event router does (docs/migrating-from-debezium.md); empty: none."`
	DebeziumFieldEventID            string `env:"DEBEZIUM_FIELD_EVENT_ID" envDefault:"id" desc:"Debezium table.field.event.id: the column of the event id, sent in header id (and, if it is a uuid, as outbox-uuid)."`
	DebeziumFieldEventKey           string `env:"DEBEZIUM_FIELD_EVENT_KEY" envDefault:"aggregateid" desc:"Debezium table.field.event.key: the column of the record key."`
	DebeziumFieldEventPayload       string `env:"DEBEZIUM_FIELD_EVENT_PAYLOAD" envDefault:"payload" desc:"Debezium table.field.event.payload: the column of the record value (jsonb, json, text or bytea)."`
	DebeziumFieldEventTimestamp     string `env:"DEBEZIUM_FIELD_EVENT_TIMESTAMP" desc:"Debezium table.field.event.timestamp: a timestamp column: the record timestamp, also sent as epoch milliseconds in header outbox-timestamp; empty: none (the row's created_at)."`
	DebeziumRouteByField            string `env:"DEBEZIUM_ROUTE_BY_FIELD" envDefault:"aggregatetype" desc:"Debezium route.by.field: the column whose value is ${routedByValue} in the topic."`
	DebeziumRouteTopicReplacement   string `env:"DEBEZIUM_ROUTE_TOPIC_REPLACEMENT" envDefault:"outbox.event.${routedByValue}" desc:"Debezium route.topic.replacement: the topic name, with ${routedByValue} for the route.by.field column."`
	DebeziumFieldsAdditionalPlace   string `env:"DEBEZIUM_ADDITIONAL_PLACEMENT" desc:"Debezium table.fields.additional.placement, header placements only: column:header[:alias],... (e.g. type:header:eventType); empty: none, as Debezium's default."`
	DebeziumTracingSpanContextField string `env:"DEBEZIUM_TRACING_FIELD" desc:"Debezium tracing.span.context.field: a column of Java properties text whose traceparent and tracestate become headers; empty: tracingspancontext if the table has it."`
	// A table of the application's own layout to take over. Default: none.
	LayoutTable     string `env:"LAYOUT_TABLE" desc:"A table of your own layout (schema.table) whose inserts a trigger copies into the outbox, mapped by the RELAY_LAYOUT_* variables; empty: none."`
	LayoutTopic     string `env:"LAYOUT_TOPIC" desc:"Topic of each row of RELAY_LAYOUT_TABLE: a name, a {column}, or a template such as orders.{aggregate_type}."`
	LayoutKey       string `env:"LAYOUT_KEY" desc:"Column of the record key; empty: no key."`
	LayoutPayload   string `env:"LAYOUT_PAYLOAD" desc:"Column of the record value (bytea, text, varchar, json or jsonb)."`
	LayoutTimestamp string `env:"LAYOUT_TIMESTAMP" desc:"Timestamp column (timestamptz, timestamp or bigint epoch milliseconds): the record timestamp, also sent as epoch milliseconds in header outbox-timestamp; empty: none (the row's created_at)."`
	LayoutHeaders   string `env:"LAYOUT_HEADERS" desc:"Columns sent as headers: column[:header],... (header defaults to the column name)."`
	// HTTPAddr is where /livez and /readyz listen. Default :8080; "off"
	// disables the HTTP server.
	HTTPAddr string `env:"HTTP_ADDR" envDefault:":8080" desc:"Listen address of the HTTP server (/livez, /readyz, /metrics); off disables it."`
	// ConsoleAddr is where the web console listens. Default: empty, no
	// console.
	ConsoleAddr string `env:"CONSOLE_ADDR" desc:"Listen address of the web console (e.g. 127.0.0.1:8081); empty: no console. Read-only unless RELAY_ADMIN_TOKEN is set."`
	// AdminToken lets console users who sign in with it requeue and
	// discard stuck rows. Default: empty, the console is read-only.
	AdminToken string `env:"ADMIN_TOKEN" desc:"Token that console users sign in with to requeue and discard (at least 16 characters); empty: the console is read-only. Never logged or shown."`
	// MaxAttempts is how many failed produce attempts a row may have
	// before it is escalated to stuck_messages. Default 10, at least 1.
	MaxAttempts int `env:"MAX_ATTEMPTS" envDefault:"10" desc:"Failed produce attempts before a row is escalated to stuck_messages (at least 1)."`
	// SentRetention is how long sent rows stay in messages (for audit and
	// verification) before the relay deletes them; 0 deletes each row as
	// soon as Kafka acknowledged it. Default 24h.
	SentRetention time.Duration `env:"SENT_RETENTION" envDefault:"24h" desc:"How long sent rows are kept before the relay deletes them in small batches; 0 deletes each row as soon as Kafka acknowledged it."`
	// VerifyInterval makes the daemon run "relay verify" every interval on
	// the rows sent since the previous run (plus a margin), export the
	// result as metrics and alert on missing or mismatched rows. It needs
	// SentRetention > 0. Default 0: off.
	VerifyInterval time.Duration `env:"VERIFY_INTERVAL" envDefault:"0s" desc:"Run the loss audit of relay verify in the daemon this often, on the rows sent since the last run; alerts on missing or mismatched rows. 0 turns it off."`
	// CheckTopicDurability reads each topic's replication factor,
	// min.insync.replicas and unclean.leader.election.enable on first use
	// and warns, counts and alerts when they can lose acknowledged records.
	// Default true.
	CheckTopicDurability bool `env:"CHECK_TOPIC_DURABILITY" envDefault:"true" desc:"Warn, count and alert when a topic has replication factor < 3, min.insync.replicas < 2 or unclean leader election on."`
	// RequireDurableTopics refuses to produce to such topics: their rows
	// are escalated with the reason. Default false.
	RequireDurableTopics bool `env:"REQUIRE_DURABLE_TOPICS" envDefault:"false" desc:"Escalate, instead of producing, the rows of topics that fail the durability check."`
	// StuckBlocksKey keeps the later rows of a key waiting while an
	// earlier row of the key is stuck (strict per-key order). Default true.
	StuckBlocksKey bool `env:"STUCK_BLOCKS_KEY" envDefault:"true" desc:"A stuck row holds back the later rows of its topic and key until requeued or discarded; false lets them proceed."`
	// ProduceTimeout is how long a record may go unanswered, the Kafka
	// client retrying, before the relay gives up on it as an outage
	// (relay.Config.ProduceTimeout); a wave of a batch gets twice this as
	// a whole (relay.Config.BatchTimeout). Default 30s.
	ProduceTimeout time.Duration `env:"PRODUCE_TIMEOUT" envDefault:"30s" desc:"How long a record may go unanswered by Kafka, the client retrying, before its row is released as an outage: pending, no attempt spent (at least 1s). A wave of a batch gets twice this as a whole."`
	// OutageAlertAfter is how long Kafka must take nothing before the
	// outage alert. Default 1m.
	OutageAlertAfter time.Duration `env:"OUTAGE_ALERT_AFTER" envDefault:"1m" desc:"How long Kafka must be unavailable before an outage alert."`
	// LagAlertAfter raises a lag alert when the oldest pending row is
	// older than this. Default 5m.
	LagAlertAfter time.Duration `env:"LAG_ALERT_AFTER" envDefault:"5m" desc:"Alert when the oldest pending row is older than this."`
	// AlertWebhookURL, when set, receives alerts as JSON POSTs with a
	// Slack-compatible text field. Default: unset (alerts only logged).
	AlertWebhookURL string `env:"ALERT_WEBHOOK_URL" desc:"URL that receives alerts as JSON POSTs (Slack-compatible text field); empty: alerts are only logged."`
	// AlertWindow is the aggregation window: one alert per kind and topic
	// at once, then one summary per window. Default 1m.
	AlertWindow time.Duration `env:"ALERT_WINDOW" envDefault:"1m" desc:"Alerts of one kind and topic are grouped over this window, in the log and the webhook alike: the first at once, the rest in one summary when it ends."`
	// ShutdownTimeout bounds how long a stopping relay waits for the
	// batch in flight before rolling it back. Default 30s.
	ShutdownTimeout time.Duration `env:"SHUTDOWN_TIMEOUT" envDefault:"30s" desc:"How long a stopping relay waits for the batch in flight before releasing it."`
	// BatchSize is how many rows one claim takes. Default 1000, between 1
	// and 100000.
	BatchSize int `env:"BATCH_SIZE" envDefault:"1000" desc:"Rows claimed per batch (1 to 100000)."`
	// BatchMaxBytes bounds the bytes (payload, key and headers) of one
	// batch. Default 16 MiB.
	BatchMaxBytes int64 `env:"BATCH_MAX_BYTES" envDefault:"16777216" desc:"Bytes of payload, key and headers one batch keeps at most (a larger row goes alone); with the batches in flight it bounds the rows the relay holds in memory."`
	// InFlightBatches is how many claimed batches may await Kafka at once,
	// across the instances of one outbox (see relay/instances.go).
	InFlightBatches int `env:"IN_FLIGHT_BATCHES" envDefault:"2" desc:"Claimed batches that may await Kafka at once (1 to 64), for all the instances on one outbox together: they split it, and an instance left without a share is a standby. Each batch holds a database connection. Raise it (3-4) when Kafka takes several milliseconds to acknowledge; 1 when the broker shares the database's machine (docs/performance.md)."`
	// PollInterval is the longest an idle relay waits before looking for
	// rows again. Default 500ms.
	PollInterval time.Duration `env:"POLL_INTERVAL" envDefault:"500ms" desc:"Longest wait of an idle relay before it polls again (the fallback to the wake-up)."`
	// ClaimLinger lets rows accumulate after a claim that did not fill its
	// batch (relay.Config.ClaimLinger). Default 0.
	ClaimLinger time.Duration `env:"CLAIM_LINGER" envDefault:"0s" desc:"After a claim that did not fill its batch, claim again no sooner than this long after it (0 to 1s): fewer, larger batches at a steady trickle, so less Postgres CPU per row, at up to this much added latency. 0 claims again as soon as Kafka answered (docs/performance.md)."`
	// Wakeup makes an idle relay ask inserts to NOTIFY it, so new rows go
	// out within milliseconds. Default true; false means polling only.
	Wakeup bool `env:"WAKEUP" envDefault:"true" desc:"Wake an idle relay by NOTIFY on insert; false polls only."`
	// RetryBase is the upper bound of the wait after a row's first failed
	// attempt; each later failure doubles it. Default 1s.
	RetryBase time.Duration `env:"RETRY_BASE" envDefault:"1s" desc:"Backoff after a row's first failed attempt (doubles per attempt, full jitter)."`
	// RetryMax caps the wait between two attempts of a row. Default 5m.
	RetryMax time.Duration `env:"RETRY_MAX" envDefault:"5m" desc:"Longest backoff between two attempts of a row."`
	// MigrateOnStart applies pending migrations when run or dev starts;
	// safe with several instances starting at once. Default true.
	MigrateOnStart bool `env:"MIGRATE_ON_START" envDefault:"true" desc:"Apply pending migrations at start (safe with several instances)."`
	// LogFormat is json or text. Default json.
	LogFormat string `env:"LOG_FORMAT" envDefault:"json" desc:"Log format on stderr: json or text."`
	// LogLevel is debug, info, warn or error. Default info.
	LogLevel string `env:"LOG_LEVEL" envDefault:"info" desc:"Log level: debug, info, warn or error."`
	// ClientID is the Kafka client id, as brokers show it in their logs
	// and quotas. Default outbox-relay.
	ClientID string `env:"CLIENT_ID" envDefault:"outbox-relay" desc:"Kafka client id."`
	// Instance names this relay in logs.
	// Default: random, different at every start.
	Instance string `env:"INSTANCE" desc:"Name of this relay in logs; empty means a random name per start."`
}

// configVars lists every RELAY_* variable in declaration order.
var configVars = describeConfig()

// ConfigVar describes one environment variable of Config.
type ConfigVar struct {
	Name        string // with the RELAY_ prefix
	Default     string // empty when there is none
	Description string
	field       string // the Go field name, for mapping env's errors back
}

// ConfigVars returns every environment variable the relay reads, with its
// default and description, in the order of the README table.
func ConfigVars() []ConfigVar { return append([]ConfigVar(nil), configVars...) }

func describeConfig() []ConfigVar {
	params, err := env.GetFieldParamsWithOptions(&Config{}, env.Options{Prefix: envPrefix})
	if err != nil {
		panic(fmt.Sprintf("config struct tags: %v", err))
	}
	t := reflect.TypeFor[Config]()
	var out []ConfigVar
	i := 0
	for j := range t.NumField() {
		f := t.Field(j)
		name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		if name == "" || name == "-" {
			continue
		}
		p := params[i]
		i++
		if p.Key != envPrefix+name {
			panic(fmt.Sprintf("config field %s: env reports %s, want %s", f.Name, p.Key, envPrefix+name))
		}
		out = append(out, ConfigVar{Name: p.Key, Default: p.DefaultValue, Description: f.Tag.Get("desc"), field: f.Name})
	}
	return out
}

// configTable renders ConfigVars as the markdown table of the README.
func configTable() string {
	var b strings.Builder
	b.WriteString("| Variable | Default | Description |\n")
	b.WriteString("| --- | --- | --- |\n")
	for _, v := range configVars {
		def := "(empty)"
		if v.Default != "" {
			def = "`" + v.Default + "`"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", v.Name, def, strings.ReplaceAll(v.Description, "|", `\|`))
	}
	return b.String()
}

// configError lists every problem with the configuration, one per line, each
// naming its environment variable.
type configError struct {
	problems []string
}

func (e *configError) Error() string {
	return "invalid configuration (run 'relay help config' for the variables):\n  " + strings.Join(e.problems, "\n  ")
}

// loadConfig reads the configuration from getenv and validates it. Its error
// is a *usageError wrapping a *configError that names every bad variable.
func loadConfig(getenv func(string) string) (Config, error) {
	environ := make(map[string]string, len(configVars))
	for _, v := range configVars {
		if s := getenv(v.Name); s != "" {
			environ[v.Name] = s
		}
	}
	var cfg Config
	problems := map[string]string{} // by variable name
	err := env.ParseWithOptions(&cfg, env.Options{Prefix: envPrefix, Environment: environ})
	if err != nil {
		agg, ok := errors.AsType[env.AggregateError](err)
		if !ok {
			return cfg, fmt.Errorf("read configuration: %w", err)
		}
		for _, e := range agg.Errors {
			pe, ok := errors.AsType[env.ParseError](e)
			if !ok {
				return cfg, fmt.Errorf("read configuration: %w", e)
			}
			v := varOfField(pe.Name)
			problems[v.Name] = describeParseError(environ[v.Name], pe)
		}
	}
	cfg.resolve(problems)
	cfg.validate(problems, getenv)
	if len(problems) > 0 {
		return cfg, &usageError{&configError{problems: listProblems(problems)}}
	}
	return cfg, nil
}

// listProblems renders problems as "VARIABLE: problem" lines: the RELAY_*
// variables in declaration order, then the others (the AWS_* variables of
// AWS_MSK_IAM) by name, so the message reads the same at every start.
func listProblems(problems map[string]string) []string {
	var lines []string
	rest := maps.Clone(problems)
	for _, v := range configVars {
		if p, ok := rest[v.Name]; ok {
			lines = append(lines, v.Name+": "+p)
			delete(rest, v.Name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(rest)) {
		lines = append(lines, name+": "+rest[name])
	}
	return lines
}

// varOfField maps a Config field name, as env's ParseError carries it, back
// to its environment variable.
func varOfField(field string) ConfigVar {
	for _, v := range configVars {
		if v.field == field {
			return v
		}
	}
	panic("config: no variable for field " + field)
}

// describeParseError says why value does not fit the field's type. The
// messages are ours rather than strconv's, which name Go functions.
func describeParseError(value string, pe env.ParseError) string {
	switch {
	case pe.Type == reflect.TypeFor[time.Duration]():
		return fmt.Sprintf("%q is not a duration (examples: 500ms, 30s, 5m)", value)
	case pe.Type.Kind() == reflect.Bool:
		return fmt.Sprintf("%q is not a boolean (use true or false)", value)
	case pe.Type.Kind() == reflect.Int:
		if errors.Is(pe.Err, strconv.ErrRange) {
			return fmt.Sprintf("%q is out of range", value)
		}
		return fmt.Sprintf("%q is not an integer", value)
	default:
		return fmt.Sprintf("%q: %v", value, pe.Err)
	}
}

// resolve reads the database URL and SASL password files, if they are
// named, and trims spaces around broker addresses.
func (c *Config) resolve(problems map[string]string) {
	if c.DatabaseURLFile != "" {
		b, err := os.ReadFile(c.DatabaseURLFile)
		switch s := strings.TrimRight(string(b), "\r\n"); {
		case err != nil:
			problems["RELAY_DATABASE_URL_FILE"] = fmt.Sprintf("cannot read it: %v", err)
		case s == "":
			problems["RELAY_DATABASE_URL_FILE"] = fmt.Sprintf("%s is empty", c.DatabaseURLFile)
		default:
			c.DatabaseURL = s
		}
	}
	for i, b := range c.KafkaBrokers {
		c.KafkaBrokers[i] = strings.TrimSpace(b)
	}
	for i, s := range c.Schemas {
		c.Schemas[i] = strings.TrimSpace(s)
	}
	c.resolveKafkaSecurity(problems)
}

// validate adds a problem for every variable whose value cannot be used. It
// skips variables that already failed to parse: their field holds no value.
// getenv is the environment loadConfig read, for the variables that are not
// the relay's own (AWS_MSK_IAM's credentials).
func (c Config) validate(problems map[string]string, getenv func(string) string) {
	add := func(name, format string, args ...any) {
		if _, ok := problems[name]; !ok {
			problems[name] = fmt.Sprintf(format, args...)
		}
	}
	parsed := func(name string) bool { _, bad := problems[name]; return !bad }

	if parsed("RELAY_DATABASE_URL_FILE") {
		name := "RELAY_DATABASE_URL"
		if c.DatabaseURLFile != "" {
			name = "RELAY_DATABASE_URL_FILE"
		}
		// PoolConfig's errors never quote the URL (nor its password);
		// redactSecret is a second line of defence.
		if _, err := relay.PoolConfig(c.DatabaseURL, "outbox"); err != nil {
			add(name, "%s", redactSecret(err.Error(), c.DatabaseURL))
		}
	}

	if len(c.KafkaBrokers) == 0 {
		add("RELAY_KAFKA_BROKERS", "no brokers given")
	}
	for _, b := range c.KafkaBrokers {
		if err := checkHostPort(b, false); err != nil {
			add("RELAY_KAFKA_BROKERS", "%q: %v", b, err)
		}
	}
	c.validateKafkaSecurity(add, parsed, getenv)
	c.validateSchemas(add)
	if _, err := c.compression(); err != nil {
		add("RELAY_KAFKA_COMPRESSION", "%v", err)
	}
	if _, err := c.mappings(); err != nil {
		if lerr, ok := errors.AsType[*layout.Error](err); ok {
			add(lerr.Setting, "%s", lerr.Problem)
		} else {
			add("RELAY_LAYOUT_TABLE", "%v", err)
		}
	}
	if c.HTTPAddr != "off" {
		if err := checkHostPort(c.HTTPAddr, true); err != nil {
			add("RELAY_HTTP_ADDR", "%q: %v (or off to disable the server)", c.HTTPAddr, err)
		}
	}
	if c.ConsoleAddr != "" {
		if err := checkHostPort(c.ConsoleAddr, true); err != nil {
			add("RELAY_CONSOLE_ADDR", "%q: %v (or empty for no console)", c.ConsoleAddr, err)
		}
	}
	if c.AdminToken != "" && len(c.AdminToken) < 16 {
		// Never echo the token, not even a short one.
		add("RELAY_ADMIN_TOKEN", "too short: use at least 16 characters (e.g. openssl rand -hex 16)")
	}
	if parsed("RELAY_VERIFY_INTERVAL") && c.VerifyInterval < 0 {
		add("RELAY_VERIFY_INTERVAL", "%v: must not be negative", c.VerifyInterval)
	}
	if parsed("RELAY_VERIFY_INTERVAL") && parsed("RELAY_SENT_RETENTION") && c.VerifyInterval > 0 && c.SentRetention == 0 {
		add("RELAY_VERIFY_INTERVAL", "%v: needs the sent rows, but RELAY_SENT_RETENTION=0 deletes them at once", c.VerifyInterval)
	}
	if parsed("RELAY_PRODUCE_TIMEOUT") && c.ProduceTimeout < time.Second {
		add("RELAY_PRODUCE_TIMEOUT", "%v: must be at least 1s", c.ProduceTimeout)
	}
	if parsed("RELAY_ALERT_WINDOW") && c.AlertWindow <= 0 {
		add("RELAY_ALERT_WINDOW", "%v: must be positive", c.AlertWindow)
	}
	if c.AlertWebhookURL != "" {
		if u, err := url.Parse(c.AlertWebhookURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			// The URL itself may be a credential (Slack's are): never echo it.
			add("RELAY_ALERT_WEBHOOK_URL", "not an http(s) URL")
		}
	}
	if c.LogFormat != "json" && c.LogFormat != "text" {
		add("RELAY_LOG_FORMAT", "%q: use json or text", c.LogFormat)
	}
	if _, err := parseLogLevel(c.LogLevel); err != nil {
		add("RELAY_LOG_LEVEL", "%q: use debug, info, warn or error", c.LogLevel)
	}
	if strings.TrimSpace(c.ClientID) == "" {
		add("RELAY_CLIENT_ID", "must not be blank")
	}
	c.validateRelay(add)
}

// relayFields names the Config field that sets each relay.Config field of
// another name.
var relayFields = map[string]string{
	"Retry.Base":   "RetryBase",
	"Retry.Max":    "RetryMax",
	"BatchTimeout": "ProduceTimeout",
	"Durability":   "RequireDurableTopics",
}

// validateRelay adds the problems of relay.Config.ValidateGiven, each under
// the variable that sets its field. Given, not Validate: every variable has
// a default of its own, so a 0 was asked for, and is not the relay's
// default. It runs after the other checks, whose messages it must not
// replace (RELAY_PRODUCE_TIMEOUT's, for BatchTimeout).
func (c Config) validateRelay(add func(name, format string, args ...any)) {
	if len(c.Schemas) == 0 {
		return // validateSchemas said so; relayConfig needs a schema
	}
	err := c.relayConfig().ValidateGiven()
	if err == nil {
		return
	}
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		fe := e.(*relay.FieldError) // ValidateGiven's only kind of error
		problem := fe.Problem
		if fe.Other != "" {
			problem = strings.ReplaceAll(problem, fe.Other, relayVar(fe.Other))
		}
		add(relayVar(fe.Field), "%v: %s", fe.Value, problem)
	}
}

// relayVar is the environment variable that sets the relay.Config field.
func relayVar(field string) string {
	return varOfField(cmp.Or(relayFields[field], field)).Name
}

// checkHostPort accepts host:port with a numeric port. For a listen address
// it also admits an empty host (":8080", every interface) and port 0 (any
// free port).
func checkHostPort(addr string, listen bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("want host:port")
	}
	if host == "" && !listen {
		return errors.New("missing host")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 0 || n > 65535 || (n == 0 && !listen) {
		return fmt.Errorf("port %q is not a number between 1 and 65535", port)
	}
	return nil
}

func parseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("unknown log level %q", s)
}

// relayConfig is the part of the configuration package relay takes.
func (c Config) relayConfig() relay.Config {
	return relay.Config{
		Schema:          c.schema(),
		BatchSize:       c.BatchSize,
		BatchMaxBytes:   c.BatchMaxBytes,
		InFlightBatches: c.InFlightBatches,
		PollInterval:    c.PollInterval,
		ClaimLinger:     c.ClaimLinger,
		DisableWakeup:   !c.Wakeup,
		Retry:           retry.Policy{Base: c.RetryBase, Max: c.RetryMax},
		// Twice the produce timeout: a wave's records each get one, and
		// a retry alone or a group handed over later may need more.
		ProduceTimeout:        c.ProduceTimeout,
		BatchTimeout:          2 * c.ProduceTimeout,
		ShutdownTimeout:       c.ShutdownTimeout,
		Instance:              c.Instance,
		MaxAttempts:           c.MaxAttempts,
		DisableStuckBlocksKey: !c.StuckBlocksKey,
		OutageAlertAfter:      c.OutageAlertAfter,
		LagAlertAfter:         c.LagAlertAfter,
		SentRetention:         c.SentRetention,
		DeleteOnSend:          c.SentRetention == 0,
		Durability:            c.durability(),
	}
}

// durability maps the two durability variables to the relay's mode.
func (c Config) durability() relay.Durability {
	switch {
	case c.RequireDurableTopics:
		return relay.DurabilityStrict
	case c.CheckTopicDurability:
		return relay.DurabilityWarn
	}
	return relay.DurabilityOff
}

// newLogger returns the slog logger the configuration asks for, on w.
func (c Config) newLogger(w io.Writer) *slog.Logger {
	level, _ := parseLogLevel(c.LogLevel) // validated
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// redactedDatabase describes the database for logs without the password:
// user@host:port/dbname, taken from the parsed configuration, so it is safe
// whatever form (URL or key=value) the connection string has.
func redactedDatabase(databaseURL string) string {
	cfg, err := relay.PoolConfig(databaseURL, "outbox")
	if err != nil {
		return "(unparsable)"
	}
	cc := cfg.ConnConfig
	return fmt.Sprintf("%s@%s/%s", cc.User, net.JoinHostPort(cc.Host, strconv.Itoa(int(cc.Port))), cc.Database)
}

// redactSecret replaces the password of databaseURL, if it has one and it
// appears in msg, with xxxxx.
func redactSecret(msg, databaseURL string) string {
	u, err := url.Parse(databaseURL)
	if err != nil || u.User == nil {
		return msg
	}
	if pw, ok := u.User.Password(); ok && pw != "" {
		msg = strings.ReplaceAll(msg, pw, "xxxxx")
		if esc := url.PathEscape(pw); esc != pw {
			msg = strings.ReplaceAll(msg, esc, "xxxxx")
		}
	}
	return msg
}

// compression returns the client option of RELAY_KAFKA_COMPRESSION.
func (c Config) compression() (kgo.Opt, error) {
	var codec kgo.CompressionCodec
	switch strings.ToLower(c.KafkaCompression) {
	case "none":
		codec = kgo.NoCompression()
	case "gzip":
		codec = kgo.GzipCompression()
	case "snappy":
		codec = kgo.SnappyCompression()
	case "lz4":
		codec = kgo.Lz4Compression()
	case "zstd":
		codec = kgo.ZstdCompression()
	default:
		return nil, fmt.Errorf("%q: use none, gzip, snappy, lz4 or zstd", c.KafkaCompression)
	}
	return kgo.ProducerBatchCompression(codec), nil
}

// mappings returns the tables to take over: the Debezium table, then the
// custom layout's. Its errors are *layout.Error naming the variable.
func (c Config) mappings() ([]layout.Mapping, error) {
	var out []layout.Mapping
	if c.DebeziumTable != "" {
		m, err := layout.Debezium(layout.DebeziumSettings{
			Table: c.DebeziumTable, EventID: c.DebeziumFieldEventID, EventKey: c.DebeziumFieldEventKey,
			EventPayload: c.DebeziumFieldEventPayload, EventTimestamp: c.DebeziumFieldEventTimestamp,
			RouteByField: c.DebeziumRouteByField, TopicReplacement: c.DebeziumRouteTopicReplacement,
			AdditionalPlace: c.DebeziumFieldsAdditionalPlace, TracingSpanColumn: c.DebeziumTracingSpanContextField,
			Names: layout.DebeziumSettingNames{
				Table: "RELAY_DEBEZIUM_TABLE", EventID: "RELAY_DEBEZIUM_FIELD_EVENT_ID", EventKey: "RELAY_DEBEZIUM_FIELD_EVENT_KEY",
				EventPayload: "RELAY_DEBEZIUM_FIELD_EVENT_PAYLOAD", EventTimestamp: "RELAY_DEBEZIUM_FIELD_EVENT_TIMESTAMP",
				RouteByField: "RELAY_DEBEZIUM_ROUTE_BY_FIELD", TopicReplacement: "RELAY_DEBEZIUM_ROUTE_TOPIC_REPLACEMENT",
				AdditionalPlace: "RELAY_DEBEZIUM_ADDITIONAL_PLACEMENT", TracingSpanColumn: "RELAY_DEBEZIUM_TRACING_FIELD",
			},
		})
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	if c.LayoutTable == "" {
		for _, v := range []struct{ name, value string }{
			{"RELAY_LAYOUT_TOPIC", c.LayoutTopic}, {"RELAY_LAYOUT_KEY", c.LayoutKey}, {"RELAY_LAYOUT_PAYLOAD", c.LayoutPayload},
			{"RELAY_LAYOUT_TIMESTAMP", c.LayoutTimestamp}, {"RELAY_LAYOUT_HEADERS", c.LayoutHeaders},
		} {
			if v.value != "" {
				return nil, &layout.Error{Setting: v.name, Problem: "set, but RELAY_LAYOUT_TABLE is not: name the table it maps"}
			}
		}
		return out, nil
	}
	m, err := layout.Custom(layout.CustomSettings{
		Table: c.LayoutTable, Topic: c.LayoutTopic, Key: c.LayoutKey, Payload: c.LayoutPayload,
		Timestamp: c.LayoutTimestamp, Headers: c.LayoutHeaders,
		Names: layout.CustomSettingNames{
			Table: "RELAY_LAYOUT_TABLE", Topic: "RELAY_LAYOUT_TOPIC", Key: "RELAY_LAYOUT_KEY", Payload: "RELAY_LAYOUT_PAYLOAD",
			Timestamp: "RELAY_LAYOUT_TIMESTAMP", Headers: "RELAY_LAYOUT_HEADERS",
		},
	})
	if err != nil {
		return nil, err
	}
	if len(out) > 0 && out[0].Table == m.Table {
		return nil, &layout.Error{Setting: "RELAY_LAYOUT_TABLE", Problem: fmt.Sprintf("%s is RELAY_DEBEZIUM_TABLE too: each insert would be delivered twice", m.Table)}
	}
	return append(out, m), nil
}
