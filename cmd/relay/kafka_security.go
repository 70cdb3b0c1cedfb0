package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// The SASL mechanisms RELAY_KAFKA_SASL_MECHANISM accepts.
//
// AWS_MSK_IAM is not among them: franz-go's sasl/aws needs no AWS SDK, but
// it takes either static keys or a callback, and the credentials a relay on
// AWS actually has (instance roles, IRSA, ECS task roles) expire and are
// refreshed by the SDK's credential chain. Static keys alone would be a
// relay that stops authenticating after a few hours.
const (
	saslPlain       = "PLAIN"
	saslScramSHA256 = "SCRAM-SHA-256"
	saslScramSHA512 = "SCRAM-SHA-512"
)

// varError is a problem with one environment variable.
type varError struct {
	name, msg string
}

func (e *varError) Error() string { return e.name + ": " + e.msg }

// kafkaSecurityOpts returns the client options for TLS and SASL that cfg
// asks for; none when it asks for neither. Its error, a *usageError, names
// the variable at fault and never holds the password.
//
// loadConfig has already checked everything checked here; this can still
// fail if a certificate file changed or vanished since.
func kafkaSecurityOpts(cfg Config) ([]kgo.Opt, error) {
	var opts []kgo.Opt
	tlsCfg, err := cfg.kafkaTLSConfig()
	if err != nil {
		return nil, asUsageError(err)
	}
	if tlsCfg != nil {
		opts = append(opts, kgo.DialTLSConfig(tlsCfg))
	}
	switch cfg.KafkaSASLMechanism {
	case "":
	case saslPlain:
		opts = append(opts, kgo.SASL(plain.Auth{User: cfg.KafkaSASLUsername, Pass: cfg.KafkaSASLPassword}.AsMechanism()))
	case saslScramSHA256:
		opts = append(opts, kgo.SASL(scram.Auth{User: cfg.KafkaSASLUsername, Pass: cfg.KafkaSASLPassword}.AsSha256Mechanism()))
	case saslScramSHA512:
		opts = append(opts, kgo.SASL(scram.Auth{User: cfg.KafkaSASLUsername, Pass: cfg.KafkaSASLPassword}.AsSha512Mechanism()))
	default:
		return nil, asUsageError(&varError{"RELAY_KAFKA_SASL_MECHANISM", unknownMechanism(cfg.KafkaSASLMechanism)})
	}
	return opts, nil
}

// asUsageError turns a *varError into the error loadConfig would have
// returned for it.
func asUsageError(err error) error {
	if ve, ok := errors.AsType[*varError](err); ok {
		return &usageError{&configError{problems: []string{ve.Error()}}}
	}
	return &usageError{err}
}

func unknownMechanism(m string) string {
	return fmt.Sprintf("%q: use %s, %s or %s (or leave it empty for no SASL)", m, saslPlain, saslScramSHA256, saslScramSHA512)
}

// kafkaTLSConfig reads the CA and client certificate files into the TLS
// configuration of the Kafka client; nil when TLS is off. Its error is a
// *varError naming the file's variable.
func (c Config) kafkaTLSConfig() (*tls.Config, error) {
	if !c.KafkaTLS {
		return nil, nil
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		// Empty lets franz-go use each broker's host, per dial.
		ServerName:         c.KafkaTLSServerName,
		InsecureSkipVerify: c.KafkaTLSInsecureSkipVerify, //nolint:gosec // explicit opt-in, warned about at start
	}
	if c.KafkaTLSCAFile != "" {
		b, err := os.ReadFile(c.KafkaTLSCAFile)
		if err != nil {
			return nil, &varError{"RELAY_KAFKA_TLS_CA_FILE", fmt.Sprintf("cannot read it: %v", err)}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, &varError{"RELAY_KAFKA_TLS_CA_FILE", fmt.Sprintf("%s holds no PEM certificate", c.KafkaTLSCAFile)}
		}
		cfg.RootCAs = pool
	}
	if c.KafkaTLSCertFile != "" && c.KafkaTLSKeyFile != "" {
		certPEM, err := os.ReadFile(c.KafkaTLSCertFile)
		if err != nil {
			return nil, &varError{"RELAY_KAFKA_TLS_CERT_FILE", fmt.Sprintf("cannot read it: %v", err)}
		}
		if err := checkCertPEM(certPEM); err != nil {
			return nil, &varError{"RELAY_KAFKA_TLS_CERT_FILE", fmt.Sprintf("%s: %v", c.KafkaTLSCertFile, err)}
		}
		keyPEM, err := os.ReadFile(c.KafkaTLSKeyFile)
		if err != nil {
			return nil, &varError{"RELAY_KAFKA_TLS_KEY_FILE", fmt.Sprintf("cannot read it: %v", err)}
		}
		// The certificate parsed, so what fails here is the key, or
		// the pair. X509KeyPair's errors never quote the key.
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, &varError{"RELAY_KAFKA_TLS_KEY_FILE", fmt.Sprintf("%s: %v", c.KafkaTLSKeyFile, err)}
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// checkCertPEM checks that b holds at least one PEM certificate and that
// every one parses, so a bad certificate file is reported as such rather
// than as a key that does not match.
func checkCertPEM(b []byte) error {
	n := 0
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		if _, err := x509.ParseCertificate(block.Bytes); err != nil {
			return fmt.Errorf("certificate %d: %w", n+1, err)
		}
		n++
	}
	if n == 0 {
		return errors.New("holds no PEM certificate")
	}
	return nil
}

// resolveKafkaSecurity reads the SASL password file, if one is named, and
// normalizes the mechanism's case.
func (c *Config) resolveKafkaSecurity(problems map[string]string) {
	c.KafkaSASLMechanism = strings.ToUpper(strings.TrimSpace(c.KafkaSASLMechanism))
	if c.KafkaSASLPasswordFile != "" {
		b, err := os.ReadFile(c.KafkaSASLPasswordFile)
		switch s := strings.TrimRight(string(b), "\r\n"); {
		case err != nil:
			problems["RELAY_KAFKA_SASL_PASSWORD_FILE"] = fmt.Sprintf("cannot read it: %v", err)
		case s == "":
			problems["RELAY_KAFKA_SASL_PASSWORD_FILE"] = fmt.Sprintf("%s is empty", c.KafkaSASLPasswordFile)
		default:
			c.KafkaSASLPassword = s
		}
	}
}

// validateKafkaSecurity adds the problems of the RELAY_KAFKA_TLS* and
// RELAY_KAFKA_SASL_* variables. No message quotes the password or the
// username.
func (c Config) validateKafkaSecurity(add func(name, format string, args ...any), parsed func(name string) bool) {
	if parsed("RELAY_KAFKA_TLS") && parsed("RELAY_KAFKA_TLS_INSECURE_SKIP_VERIFY") {
		if !c.KafkaTLS {
			// TLS is never turned on behind the operator's back: a
			// RELAY_KAFKA_TLS=false next to a CA file is a mistake
			// to point out, not to guess about.
			for _, v := range []struct {
				name string
				set  bool
			}{
				{"RELAY_KAFKA_TLS_CA_FILE", c.KafkaTLSCAFile != ""},
				{"RELAY_KAFKA_TLS_CERT_FILE", c.KafkaTLSCertFile != ""},
				{"RELAY_KAFKA_TLS_KEY_FILE", c.KafkaTLSKeyFile != ""},
				{"RELAY_KAFKA_TLS_SERVER_NAME", c.KafkaTLSServerName != ""},
				{"RELAY_KAFKA_TLS_INSECURE_SKIP_VERIFY", c.KafkaTLSInsecureSkipVerify},
			} {
				if v.set {
					add(v.name, "needs RELAY_KAFKA_TLS=true")
				}
			}
		} else {
			switch {
			case c.KafkaTLSCertFile != "" && c.KafkaTLSKeyFile == "":
				add("RELAY_KAFKA_TLS_KEY_FILE", "required with RELAY_KAFKA_TLS_CERT_FILE")
			case c.KafkaTLSCertFile == "" && c.KafkaTLSKeyFile != "":
				add("RELAY_KAFKA_TLS_CERT_FILE", "required with RELAY_KAFKA_TLS_KEY_FILE")
			}
			if _, err := c.kafkaTLSConfig(); err != nil {
				if ve, ok := errors.AsType[*varError](err); ok {
					add(ve.name, "%s", ve.msg)
				}
			}
		}
	}

	password := parsed("RELAY_KAFKA_SASL_PASSWORD_FILE")
	switch m := c.KafkaSASLMechanism; m {
	case "":
		if c.KafkaSASLUsername != "" {
			add("RELAY_KAFKA_SASL_USERNAME", "needs RELAY_KAFKA_SASL_MECHANISM")
		}
		if c.KafkaSASLPassword != "" || c.KafkaSASLPasswordFile != "" {
			name := "RELAY_KAFKA_SASL_PASSWORD"
			if c.KafkaSASLPasswordFile != "" {
				name = "RELAY_KAFKA_SASL_PASSWORD_FILE"
			}
			add(name, "needs RELAY_KAFKA_SASL_MECHANISM")
		}
	case saslPlain, saslScramSHA256, saslScramSHA512:
		if c.KafkaSASLUsername == "" {
			add("RELAY_KAFKA_SASL_USERNAME", "required with RELAY_KAFKA_SASL_MECHANISM=%s", m)
		}
		if password && c.KafkaSASLPassword == "" {
			add("RELAY_KAFKA_SASL_PASSWORD", "required with RELAY_KAFKA_SASL_MECHANISM=%s (or RELAY_KAFKA_SASL_PASSWORD_FILE)", m)
		}
	default:
		add("RELAY_KAFKA_SASL_MECHANISM", "%s", unknownMechanism(m))
	}
}

// kafkaSecured reports whether cfg asks for TLS or SASL.
func (c Config) kafkaSecured() bool {
	return c.KafkaTLS || c.KafkaSASLMechanism != ""
}

// withoutKafkaSecurity returns cfg with TLS and SASL off, for the plaintext
// broker of relay dev.
func (c Config) withoutKafkaSecurity() Config {
	c.KafkaTLS, c.KafkaTLSCAFile, c.KafkaTLSCertFile, c.KafkaTLSKeyFile = false, "", "", ""
	c.KafkaTLSServerName, c.KafkaTLSInsecureSkipVerify = "", false
	c.KafkaSASLMechanism, c.KafkaSASLUsername, c.KafkaSASLPassword, c.KafkaSASLPasswordFile = "", "", "", ""
	return c
}

// logKafkaSecurityWarnings warns about settings that weaken the connection
// to Kafka.
func logKafkaSecurityWarnings(log *slog.Logger, cfg Config) {
	if cfg.KafkaTLS && cfg.KafkaTLSInsecureSkipVerify {
		log.Warn("kafka_tls_insecure_skip_verify",
			"warning", "broker certificates are not verified: anyone on the path can impersonate the brokers")
	}
	if cfg.KafkaSASLMechanism == saslPlain && !cfg.KafkaTLS {
		log.Warn("kafka_sasl_plain_without_tls",
			"warning", "the SASL password crosses the network in clear text; set RELAY_KAFKA_TLS=true")
	}
}
