package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/aws"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// The SASL mechanisms RELAY_KAFKA_SASL_MECHANISM accepts.
const (
	saslPlain       = "PLAIN"
	saslScramSHA256 = "SCRAM-SHA-256"
	saslScramSHA512 = "SCRAM-SHA-512"
	saslAWSMSKIAM   = "AWS_MSK_IAM"
)

// The standard AWS variables AWS_MSK_IAM takes its credentials from. They
// are not RELAY_* variables because the platforms that hand out AWS
// credentials (ECS secrets, Kubernetes secrets, CI runners) already set
// them under these names.
const (
	awsAccessKeyID     = "AWS_ACCESS_KEY_ID"
	awsSecretAccessKey = "AWS_SECRET_ACCESS_KEY"
	awsSessionToken    = "AWS_SESSION_TOKEN"
	awsRegion          = "AWS_REGION"
	awsDefaultRegion   = "AWS_DEFAULT_REGION"
)

// varError is a problem with one environment variable.
type varError struct {
	name, msg string
}

func (e *varError) Error() string { return e.name + ": " + e.msg }

// kafkaSecurityOpts returns the client options for TLS and SASL that cfg
// asks for; none when it asks for neither. getenv is the process
// environment, which AWS_MSK_IAM reads its credentials from at each
// authentication. Its error, a *usageError, names the variable at fault and
// never holds the password.
//
// loadConfig has already checked everything checked here; this can still
// fail if a certificate file changed or vanished since.
func kafkaSecurityOpts(cfg Config, getenv func(string) string) ([]kgo.Opt, error) {
	var opts []kgo.Opt
	tlsCfg, err := cfg.kafkaTLSConfig()
	if err != nil {
		return nil, asUsageError(err)
	}
	if tlsCfg != nil {
		opts = append(opts, kgo.DialTLSConfig(tlsCfg))
	}
	mech, err := cfg.saslMechanism(getenv)
	if err != nil {
		return nil, asUsageError(err)
	}
	if mech != nil {
		opts = append(opts, kgo.SASL(mech))
	}
	return opts, nil
}

// saslMechanism returns the SASL mechanism cfg asks for; nil for none. Its
// error is a *varError.
func (c Config) saslMechanism(getenv func(string) string) (sasl.Mechanism, error) {
	switch c.KafkaSASLMechanism {
	case "":
		return nil, nil
	case saslPlain:
		return plain.Auth{User: c.KafkaSASLUsername, Pass: c.KafkaSASLPassword}.AsMechanism(), nil
	case saslScramSHA256:
		return scram.Auth{User: c.KafkaSASLUsername, Pass: c.KafkaSASLPassword}.AsSha256Mechanism(), nil
	case saslScramSHA512:
		return scram.Auth{User: c.KafkaSASLUsername, Pass: c.KafkaSASLPassword}.AsSha512Mechanism(), nil
	case saslAWSMSKIAM:
		return aws.ManagedStreamingIAM(awsCredentialsFunc(getenv, c.KafkaAWSUserAgent)), nil
	}
	return nil, &varError{"RELAY_KAFKA_SASL_MECHANISM", unknownMechanism(c.KafkaSASLMechanism)}
}

// awsCredentialsFunc returns the credentials callback of AWS_MSK_IAM:
// franz-go calls it for every SASL session (each new connection, and each
// re-authentication before MSK's session lifetime ends), and it reads the
// standard AWS variables then, not once at start. That is all the AWS SDK's
// environment provider does too; this keeps the SDK, its credential chain
// and its dependencies out of the binary.
//
// A process's environment is fixed when it starts, so in production this
// sees the values the platform set at start: temporary credentials that
// expire need a restart with fresh ones (see docs/operations.md). Reading
// at each session rather than once costs nothing, and the mechanism never
// keeps a copy of the secret key that could outlive the variable.
func awsCredentialsFunc(getenv func(string) string, userAgent string) func(context.Context) (aws.Auth, error) {
	return func(context.Context) (aws.Auth, error) {
		auth := aws.Auth{
			AccessKey:    getenv(awsAccessKeyID),
			SecretKey:    getenv(awsSecretAccessKey),
			SessionToken: getenv(awsSessionToken),
			UserAgent:    userAgent,
		}
		// loadConfig checked both at start; an environment emptied
		// since is an authentication failure, which the relay treats
		// as an outage (rows wait, an alert is raised).
		switch {
		case auth.AccessKey == "":
			return aws.Auth{}, fmt.Errorf("%s: %s is not set", saslAWSMSKIAM, awsAccessKeyID)
		case auth.SecretKey == "":
			return aws.Auth{}, fmt.Errorf("%s: %s is not set", saslAWSMSKIAM, awsSecretAccessKey)
		}
		return auth, nil
	}
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
	return fmt.Sprintf("%q: use %s, %s, %s or %s (or leave it empty for no SASL)", m, saslPlain, saslScramSHA256, saslScramSHA512, saslAWSMSKIAM)
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

// validateKafkaSecurity adds the problems of the RELAY_KAFKA_TLS*,
// RELAY_KAFKA_SASL_* and, for AWS_MSK_IAM, AWS_* variables, read with
// getenv. No message quotes a password, a secret key or the username.
func (c Config) validateKafkaSecurity(add func(name, format string, args ...any), parsed func(name string) bool, getenv func(string) string) {
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
	case saslAWSMSKIAM:
		c.validateAWSMSKIAM(add, getenv)
	default:
		add("RELAY_KAFKA_SASL_MECHANISM", "%s", unknownMechanism(m))
	}
	if m := c.KafkaSASLMechanism; m != saslAWSMSKIAM && c.KafkaAWSUserAgent != "" {
		add("RELAY_KAFKA_AWS_USER_AGENT", "needs RELAY_KAFKA_SASL_MECHANISM=%s", saslAWSMSKIAM)
	}
}

// validateAWSMSKIAM checks what AWS_MSK_IAM needs: credentials, no
// username or password that would be silently ignored, and a region for
// every broker whose host name does not carry one.
func (c Config) validateAWSMSKIAM(add func(name, format string, args ...any), getenv func(string) string) {
	for _, name := range []string{awsAccessKeyID, awsSecretAccessKey} {
		if getenv(name) == "" {
			add(name, "required with RELAY_KAFKA_SASL_MECHANISM=%s", saslAWSMSKIAM)
		}
	}
	if c.KafkaSASLUsername != "" {
		add("RELAY_KAFKA_SASL_USERNAME", "not used with RELAY_KAFKA_SASL_MECHANISM=%s (credentials come from %s and %s): unset it", saslAWSMSKIAM, awsAccessKeyID, awsSecretAccessKey)
	}
	if c.KafkaSASLPassword != "" || c.KafkaSASLPasswordFile != "" {
		name := "RELAY_KAFKA_SASL_PASSWORD"
		if c.KafkaSASLPasswordFile != "" {
			name = "RELAY_KAFKA_SASL_PASSWORD_FILE"
		}
		add(name, "not used with RELAY_KAFKA_SASL_MECHANISM=%s (credentials come from %s and %s): unset it", saslAWSMSKIAM, awsAccessKeyID, awsSecretAccessKey)
	}
	if getenv(awsRegion) != "" || getenv(awsDefaultRegion) != "" {
		return
	}
	for _, b := range c.KafkaBrokers {
		host, _, err := net.SplitHostPort(b)
		if err == nil && !awsRegionInHost(host) {
			add(awsRegion, "required with RELAY_KAFKA_SASL_MECHANISM=%s: broker %q does not name its region (or set %s)", saslAWSMSKIAM, b, awsDefaultRegion)
			return
		}
	}
}

// awsRegionInHost reports whether franz-go's sasl/aws can read the signing
// region from host, as it does for MSK's broker names
// (b-1.name.id.c2.kafka.eu-west-1.amazonaws.com); for any other host it
// falls back to AWS_REGION and AWS_DEFAULT_REGION, and fails at connection
// time without them. The suffixes are those of its identifyRegion.
func awsRegionInHost(host string) bool {
	for _, suffix := range []string{".amazonaws.com", ".amazonaws.com.cn", ".c2s.ic.gov", ".sc2s.sgov.gov"} {
		if rest, ok := strings.CutSuffix(host, suffix); ok {
			return strings.Contains(rest, ".")
		}
	}
	return false
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
	c.KafkaAWSUserAgent = ""
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
	if cfg.KafkaSASLMechanism == saslAWSMSKIAM && !cfg.KafkaTLS {
		// MSK's IAM listener (port 9098) speaks only TLS, and the
		// signed request is a bearer token for five minutes.
		log.Warn("kafka_aws_msk_iam_without_tls",
			"warning", "MSK accepts IAM authentication only over TLS, and the signed request crosses the network in clear text; set RELAY_KAFKA_TLS=true")
	}
}
