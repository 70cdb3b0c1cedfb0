package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/outboxrelay/relay/relay"
)

// testCA is a throwaway certificate authority for one test.
type testCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	pemFile string // the CA certificate, PEM
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{cert: cert, key: key, pemFile: filepath.Join(t.TempDir(), name+".pem")}
	writePEM(t, ca.pemFile, "CERTIFICATE", der)
	return ca
}

// issue signs a leaf certificate for 127.0.0.1 and localhost and returns
// it as a tls.Certificate and as PEM files.
func (ca *testCA) issue(t *testing.T, name string, usage x509.ExtKeyUsage) (pair tls.Certificate, certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	writePEM(t, certFile, "CERTIFICATE", der)
	writePEM(t, keyFile, "PRIVATE KEY", keyDER)
	pair, err = tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return pair, certFile, keyFile
}

func writePEM(t *testing.T, file, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}

// secureCluster starts kfake with TLS (server certificate from ca; client
// certificates from ca required when mutual) and, if user is set, SASL with
// that SCRAM-SHA-256 superuser.
func secureCluster(t *testing.T, ca *testCA, mutual bool, user, pass string) []string {
	t.Helper()
	serverPair, _, _ := ca.issue(t, "broker", x509.ExtKeyUsageServerAuth)
	tlsCfg := &tls.Config{Certificates: []tls.Certificate{serverPair}, MinVersion: tls.VersionTLS12}
	if mutual {
		pool := x509.NewCertPool()
		pool.AddCert(ca.cert)
		tlsCfg.ClientCAs, tlsCfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	opts := []kfake.Opt{kfake.NumBrokers(1), kfake.TLS(tlsCfg), kfake.SeedTopics(1, "orders")}
	if user != "" {
		opts = append(opts, kfake.EnableSASL(), kfake.Superuser(saslScramSHA256, user, pass))
	}
	cluster, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	return cluster.ListenAddrs()
}

// connect builds the relay's Kafka client from environ, as the daemon does,
// pings the brokers and produces one record.
func connect(t *testing.T, brokers []string, environ map[string]string) error {
	t.Helper()
	environ["RELAY_KAFKA_BROKERS"] = strings.Join(brokers, ",")
	cfg, err := loadConfig(mapEnv(environ))
	if err != nil {
		t.Fatalf("loadConfig: %v", err)
	}
	opts, err := kafkaSecurityOpts(cfg, mapEnv(environ))
	if err != nil {
		t.Fatalf("kafkaSecurityOpts: %v", err)
	}
	client, err := relay.NewKafkaClient(cfg.KafkaBrokers, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := client.Ping(ctx); err != nil {
		return err
	}
	// A failed handshake is retried until the record's context ends: keep
	// it short, the broker is local.
	produce, cancelProduce := context.WithTimeout(ctx, 5*time.Second)
	defer cancelProduce()
	return client.ProduceSync(produce, &kgo.Record{Topic: "orders", Value: []byte("x")}).FirstErr()
}

func TestKafkaTLSAndSCRAM(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, "ca")
	brokers := secureCluster(t, ca, true, "relay", "Scr4m-Secret")
	_, certFile, keyFile := ca.issue(t, "client", x509.ExtKeyUsageClientAuth)
	passFile := writeFile(t, "password", "Scr4m-Secret\n")
	environ := func() map[string]string {
		return map[string]string{
			"RELAY_KAFKA_TLS":                "true",
			"RELAY_KAFKA_TLS_CA_FILE":        ca.pemFile,
			"RELAY_KAFKA_TLS_CERT_FILE":      certFile,
			"RELAY_KAFKA_TLS_KEY_FILE":       keyFile,
			"RELAY_KAFKA_SASL_MECHANISM":     "scram-sha-256",
			"RELAY_KAFKA_SASL_USERNAME":      "relay",
			"RELAY_KAFKA_SASL_PASSWORD":      "not-this-one",
			"RELAY_KAFKA_SASL_PASSWORD_FILE": passFile, // wins
		}
	}

	t.Run("right password", func(t *testing.T) {
		t.Parallel()
		if err := connect(t, brokers, environ()); err != nil {
			t.Fatalf("produce over TLS with SCRAM-SHA-256: %v", err)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		t.Parallel()
		env := environ()
		delete(env, "RELAY_KAFKA_SASL_PASSWORD_FILE")
		err := connect(t, brokers, env)
		if err == nil {
			t.Fatal("connected with the wrong password")
		}
		if strings.Contains(err.Error(), "not-this-one") {
			t.Errorf("error shows the password: %v", err)
		}
	})
	t.Run("no client certificate", func(t *testing.T) {
		t.Parallel()
		env := environ()
		delete(env, "RELAY_KAFKA_TLS_CERT_FILE")
		delete(env, "RELAY_KAFKA_TLS_KEY_FILE")
		if err := connect(t, brokers, env); err == nil {
			t.Fatal("connected without the client certificate the broker requires")
		}
	})
}

func TestKafkaTLSVerifiesTheBroker(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, "ca")
	other := newTestCA(t, "other")
	brokers := secureCluster(t, ca, false, "", "")

	if err := connect(t, brokers, map[string]string{"RELAY_KAFKA_TLS": "true", "RELAY_KAFKA_TLS_CA_FILE": ca.pemFile}); err != nil {
		t.Fatalf("trusted CA: %v", err)
	}
	err := connect(t, brokers, map[string]string{"RELAY_KAFKA_TLS": "true", "RELAY_KAFKA_TLS_CA_FILE": other.pemFile})
	if err == nil {
		t.Fatal("connected to a broker whose certificate an untrusted CA signed")
	}
	// The certificate holds 127.0.0.1 and localhost, not this name.
	err = connect(t, brokers, map[string]string{"RELAY_KAFKA_TLS": "true", "RELAY_KAFKA_TLS_CA_FILE": ca.pemFile, "RELAY_KAFKA_TLS_SERVER_NAME": "kafka.example"})
	if err == nil {
		t.Fatal("connected although the certificate does not hold RELAY_KAFKA_TLS_SERVER_NAME")
	}
	if err := connect(t, brokers, map[string]string{"RELAY_KAFKA_TLS": "true", "RELAY_KAFKA_TLS_INSECURE_SKIP_VERIFY": "true"}); err != nil {
		t.Fatalf("insecure skip verify: %v", err)
	}
}

func TestKafkaSecurityConfigErrors(t *testing.T) {
	t.Parallel()
	const secret = "Pa55-Never-Shown"
	ca := newTestCA(t, "ca")
	_, certFile, keyFile := ca.issue(t, "client", x509.ExtKeyUsageClientAuth)
	_, _, otherKey := ca.issue(t, "other", x509.ExtKeyUsageClientAuth)
	garbage := writeFile(t, "garbage.pem", "not a certificate\n")
	emptyPass := writeFile(t, "empty", "\n")

	tests := []struct {
		name    string
		environ map[string]string
		want    string
	}{
		{"mechanism without username", map[string]string{"RELAY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256", "RELAY_KAFKA_SASL_PASSWORD": secret},
			"RELAY_KAFKA_SASL_USERNAME: required with RELAY_KAFKA_SASL_MECHANISM=SCRAM-SHA-256"},
		{"mechanism without password", map[string]string{"RELAY_KAFKA_SASL_MECHANISM": "PLAIN", "RELAY_KAFKA_SASL_USERNAME": "relay"},
			"RELAY_KAFKA_SASL_PASSWORD: required with RELAY_KAFKA_SASL_MECHANISM=PLAIN"},
		{"unknown mechanism", map[string]string{"RELAY_KAFKA_SASL_MECHANISM": "GSSAPI", "RELAY_KAFKA_SASL_USERNAME": "relay", "RELAY_KAFKA_SASL_PASSWORD": secret},
			`RELAY_KAFKA_SASL_MECHANISM: "GSSAPI": use PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or AWS_MSK_IAM`},
		{"AWS_MSK_IAM without access key", map[string]string{"RELAY_KAFKA_SASL_MECHANISM": "AWS_MSK_IAM", "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "eu-west-1"},
			"AWS_ACCESS_KEY_ID: required with RELAY_KAFKA_SASL_MECHANISM=AWS_MSK_IAM"},
		{"AWS_MSK_IAM without secret key", map[string]string{"RELAY_KAFKA_SASL_MECHANISM": "aws_msk_iam", "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_REGION": "eu-west-1"},
			"AWS_SECRET_ACCESS_KEY: required with RELAY_KAFKA_SASL_MECHANISM=AWS_MSK_IAM"},
		{"AWS_MSK_IAM with a username", map[string]string{"RELAY_KAFKA_SASL_MECHANISM": "AWS_MSK_IAM", "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "eu-west-1", "RELAY_KAFKA_SASL_USERNAME": "relay"},
			"RELAY_KAFKA_SASL_USERNAME: not used with RELAY_KAFKA_SASL_MECHANISM=AWS_MSK_IAM"},
		{"AWS_MSK_IAM with a password", map[string]string{"RELAY_KAFKA_SASL_MECHANISM": "AWS_MSK_IAM", "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "eu-west-1", "RELAY_KAFKA_SASL_PASSWORD": secret},
			"RELAY_KAFKA_SASL_PASSWORD: not used with RELAY_KAFKA_SASL_MECHANISM=AWS_MSK_IAM"},
		{"AWS_MSK_IAM without a region", map[string]string{"RELAY_KAFKA_SASL_MECHANISM": "AWS_MSK_IAM", "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": secret,
			"RELAY_KAFKA_BROKERS": "b-1.relay.abc123.c2.kafka.eu-west-1.amazonaws.com:9098,kafka.internal:9098"},
			`AWS_REGION: required with RELAY_KAFKA_SASL_MECHANISM=AWS_MSK_IAM: broker "kafka.internal:9098" does not name its region`},
		{"user agent without AWS_MSK_IAM", map[string]string{"RELAY_KAFKA_AWS_USER_AGENT": "relay/1"},
			"RELAY_KAFKA_AWS_USER_AGENT: needs RELAY_KAFKA_SASL_MECHANISM=AWS_MSK_IAM"},
		{"password without mechanism", map[string]string{"RELAY_KAFKA_SASL_PASSWORD": secret},
			"RELAY_KAFKA_SASL_PASSWORD: needs RELAY_KAFKA_SASL_MECHANISM"},
		{"empty password file", map[string]string{"RELAY_KAFKA_SASL_MECHANISM": "PLAIN", "RELAY_KAFKA_SASL_USERNAME": "relay", "RELAY_KAFKA_SASL_PASSWORD": secret, "RELAY_KAFKA_SASL_PASSWORD_FILE": emptyPass},
			"RELAY_KAFKA_SASL_PASSWORD_FILE: " + emptyPass + " is empty"},
		{"missing password file", map[string]string{"RELAY_KAFKA_SASL_MECHANISM": "PLAIN", "RELAY_KAFKA_SASL_USERNAME": "relay", "RELAY_KAFKA_SASL_PASSWORD_FILE": "/nonexistent/pass"},
			"RELAY_KAFKA_SASL_PASSWORD_FILE: cannot read it"},
		{"cert without key", map[string]string{"RELAY_KAFKA_TLS": "true", "RELAY_KAFKA_TLS_CERT_FILE": certFile},
			"RELAY_KAFKA_TLS_KEY_FILE: required with RELAY_KAFKA_TLS_CERT_FILE"},
		{"key without cert", map[string]string{"RELAY_KAFKA_TLS": "true", "RELAY_KAFKA_TLS_KEY_FILE": keyFile},
			"RELAY_KAFKA_TLS_CERT_FILE: required with RELAY_KAFKA_TLS_KEY_FILE"},
		{"CA file without TLS", map[string]string{"RELAY_KAFKA_TLS_CA_FILE": ca.pemFile},
			"RELAY_KAFKA_TLS_CA_FILE: needs RELAY_KAFKA_TLS=true"},
		{"skip verify without TLS", map[string]string{"RELAY_KAFKA_TLS_INSECURE_SKIP_VERIFY": "true"},
			"RELAY_KAFKA_TLS_INSECURE_SKIP_VERIFY: needs RELAY_KAFKA_TLS=true"},
		{"TLS not a boolean", map[string]string{"RELAY_KAFKA_TLS": "on"},
			`RELAY_KAFKA_TLS: "on" is not a boolean`},
		{"missing CA file", map[string]string{"RELAY_KAFKA_TLS": "true", "RELAY_KAFKA_TLS_CA_FILE": "/nonexistent/ca.pem"},
			"RELAY_KAFKA_TLS_CA_FILE: cannot read it"},
		{"CA file not PEM", map[string]string{"RELAY_KAFKA_TLS": "true", "RELAY_KAFKA_TLS_CA_FILE": garbage},
			"RELAY_KAFKA_TLS_CA_FILE: " + garbage + " holds no PEM certificate"},
		{"cert file not PEM", map[string]string{"RELAY_KAFKA_TLS": "true", "RELAY_KAFKA_TLS_CERT_FILE": garbage, "RELAY_KAFKA_TLS_KEY_FILE": keyFile},
			"RELAY_KAFKA_TLS_CERT_FILE: " + garbage + ": holds no PEM certificate"},
		{"key file not PEM", map[string]string{"RELAY_KAFKA_TLS": "true", "RELAY_KAFKA_TLS_CERT_FILE": certFile, "RELAY_KAFKA_TLS_KEY_FILE": garbage},
			"RELAY_KAFKA_TLS_KEY_FILE: " + garbage + ": tls:"},
		{"key of another cert", map[string]string{"RELAY_KAFKA_TLS": "true", "RELAY_KAFKA_TLS_CERT_FILE": certFile, "RELAY_KAFKA_TLS_KEY_FILE": otherKey},
			"RELAY_KAFKA_TLS_KEY_FILE: " + otherKey + ": tls: private key does not match public key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := loadConfig(mapEnv(tt.environ))
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q\ndoes not contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error shows the password: %v", err)
			}
			if exitCode(err) != 2 {
				t.Errorf("exit code %d, want 2", exitCode(err))
			}
		})
	}
}

// A certificate file that breaks between loadConfig and the start of the
// daemon is a usage error naming its variable, as it would have been.
func TestKafkaSecurityOptsUsageError(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(mapEnv(nil))
	if err != nil {
		t.Fatal(err)
	}
	if opts, err := kafkaSecurityOpts(cfg, mapEnv(nil)); err != nil || len(opts) != 0 {
		t.Fatalf("defaults: %d options, error %v; want none", len(opts), err)
	}
	cfg.KafkaTLS, cfg.KafkaTLSCAFile = true, "/nonexistent/ca.pem"
	_, err = kafkaSecurityOpts(cfg, mapEnv(nil))
	if exitCode(err) != 2 || !strings.Contains(err.Error(), "RELAY_KAFKA_TLS_CA_FILE: cannot read it") {
		t.Errorf("error %v (exit code %d), want a usage error about RELAY_KAFKA_TLS_CA_FILE", err, exitCode(err))
	}
}

func TestKafkaSecurityWarnings(t *testing.T) {
	t.Parallel()
	const secret = "Pl41n-Secret"
	cfg, err := loadConfig(mapEnv(map[string]string{
		"RELAY_KAFKA_SASL_MECHANISM": "PLAIN",
		"RELAY_KAFKA_SASL_USERNAME":  "relay",
		"RELAY_KAFKA_SASL_PASSWORD":  secret,
	}))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	logKafkaSecurityWarnings(cfg.newLogger(&buf), cfg)
	if !strings.Contains(buf.String(), `"msg":"kafka_sasl_plain_without_tls"`) {
		t.Errorf("no warning about PLAIN without TLS:\n%s", buf.String())
	}

	cfg.KafkaTLS, cfg.KafkaTLSInsecureSkipVerify = true, true
	buf.Reset()
	logKafkaSecurityWarnings(cfg.newLogger(&buf), cfg)
	if !strings.Contains(buf.String(), `"msg":"kafka_tls_insecure_skip_verify"`) || strings.Contains(buf.String(), "kafka_sasl_plain_without_tls") {
		t.Errorf("want only the insecure-skip-verify warning:\n%s", buf.String())
	}
	if strings.Contains(buf.String(), secret) {
		t.Errorf("log shows the password:\n%s", buf.String())
	}

	if sec := cfg.withoutKafkaSecurity(); sec.kafkaSecured() || sec.KafkaSASLPassword != "" || sec.KafkaTLSInsecureSkipVerify {
		t.Errorf("withoutKafkaSecurity left %+v", sec)
	}
}
