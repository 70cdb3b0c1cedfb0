package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl"
)

// mskBroker is an MSK broker name: franz-go reads the signing region from
// it, so these tests need no AWS_REGION.
const mskBroker = "b-1.relay.abc123.c2.kafka.eu-west-1.amazonaws.com:9098"

// awsEnv is an AWS_MSK_IAM configuration with the credentials of the AWS
// SigV4 documentation's examples.
func awsEnv() map[string]string {
	return map[string]string{
		"RELAY_KAFKA_BROKERS":        mskBroker,
		"RELAY_KAFKA_SASL_MECHANISM": "aws_msk_iam",
		"RELAY_KAFKA_AWS_USER_AGENT": "outbox-relay/test",
		"AWS_ACCESS_KEY_ID":          "AKIDEXAMPLE",
		"AWS_SECRET_ACCESS_KEY":      "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
		"AWS_SESSION_TOKEN":          "session/token+with=odd chars",
	}
}

// mskChallenge is the first client message of AWS_MSK_IAM: a JSON object
// of lower-cased SigV4 presigned-URL parameters.
type mskChallenge map[string]string

func parseMSKChallenge(t *testing.T, b []byte) mskChallenge {
	t.Helper()
	var c mskChallenge
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("AWS_MSK_IAM challenge is not a JSON object of strings: %v\n%s", err, b)
	}
	return c
}

// checkSigned checks that c is a kafka-cluster:Connect request for host,
// signed for region with the given credentials. The signature is computed
// here from the AWS Signature Version 4 specification, independently of
// franz-go: a mechanism that signed with another secret, or signed
// something else, fails.
func (c mskChallenge) checkSigned(t *testing.T, host, region, accessKey, secretKey, sessionToken string) {
	t.Helper()
	stamp, err := time.Parse("20060102T150405Z", c["x-amz-date"])
	if err != nil {
		t.Fatalf("x-amz-date %q: %v", c["x-amz-date"], err)
	}
	if d := time.Since(stamp); d < -time.Minute || d > time.Minute {
		t.Errorf("x-amz-date %s is %v away from now", c["x-amz-date"], d)
	}
	scope := stamp.Format("20060102") + "/" + region + "/kafka-cluster/aws4_request"
	for k, want := range map[string]string{
		"action":               "kafka-cluster:Connect",
		"host":                 host,
		"version":              "2020_10_22",
		"x-amz-algorithm":      "AWS4-HMAC-SHA256",
		"x-amz-credential":     accessKey + "/" + scope,
		"x-amz-signedheaders":  "host",
		"x-amz-security-token": sessionToken,
	} {
		if got := c[k]; got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}

	// The presigned URL's query, sorted by name, without the signature.
	names := []string{"Action", "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-Security-Token", "X-Amz-SignedHeaders"}
	var query []string
	for _, n := range names {
		if v, ok := c[strings.ToLower(n)]; ok {
			query = append(query, uriEncode(n)+"="+uriEncode(v))
		}
	}
	emptyHash := sha256.Sum256(nil)
	canonical := "GET\n/\n" + strings.Join(query, "&") + "\nhost:" + host + "\n\nhost\n" + hex.EncodeToString(emptyHash[:])
	canonicalHash := sha256.Sum256([]byte(canonical))
	toSign := "AWS4-HMAC-SHA256\n" + c["x-amz-date"] + "\n" + scope + "\n" + hex.EncodeToString(canonicalHash[:])
	key := []byte("AWS4" + secretKey)
	for _, part := range []string{stamp.Format("20060102"), region, "kafka-cluster", "aws4_request", toSign} {
		key = hmacSHA256(key, part)
	}
	if want := hex.EncodeToString(key); c["x-amz-signature"] != want {
		t.Errorf("x-amz-signature = %q, want %q (signed with another key, or another request)", c["x-amz-signature"], want)
	}
}

func hmacSHA256(key []byte, data string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(data))
	return h.Sum(nil)
}

// uriEncode is SigV4's URI encoding: RFC 3986 unreserved characters as
// they are, every other byte as %XX.
func uriEncode(s string) string {
	var b strings.Builder
	for i := range len(s) {
		switch c := s[i]; {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_', c == '.', c == '~':
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// authenticate runs the first step of mech against host and parses the
// message it would send.
func authenticate(t *testing.T, mech sasl.Mechanism, host string) mskChallenge {
	t.Helper()
	_, first, err := mech.Authenticate(t.Context(), host)
	if err != nil {
		t.Fatalf("Authenticate: %v", err)
	}
	return parseMSKChallenge(t, first)
}

// The mechanism the configuration builds signs with the credentials in the
// environment at each authentication, not with those it found at start.
func TestAWSMSKIAMSignsWithTheEnvironmentsCredentials(t *testing.T) {
	t.Parallel()
	environ := awsEnv()
	cfg, err := loadConfig(mapEnv(environ))
	if err != nil {
		t.Fatalf("loadConfig: %v", err)
	}
	mech, err := cfg.saslMechanism(mapEnv(environ))
	if err != nil {
		t.Fatal(err)
	}
	if mech.Name() != "AWS_MSK_IAM" {
		t.Fatalf("mechanism %s, want AWS_MSK_IAM", mech.Name())
	}
	host, _, _ := net.SplitHostPort(mskBroker)

	c := authenticate(t, mech, mskBroker)
	c.checkSigned(t, host, "eu-west-1", "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session/token+with=odd chars")
	if c["user-agent"] != "outbox-relay/test" {
		t.Errorf("user-agent = %q, want RELAY_KAFKA_AWS_USER_AGENT's outbox-relay/test", c["user-agent"])
	}

	// Long-lived keys: no session token.
	environ["AWS_ACCESS_KEY_ID"], environ["AWS_SECRET_ACCESS_KEY"] = "AKIDROTATED", "rotated-secret"
	delete(environ, "AWS_SESSION_TOKEN")
	c = authenticate(t, mech, mskBroker)
	c.checkSigned(t, host, "eu-west-1", "AKIDROTATED", "rotated-secret", "")
	if _, ok := c["x-amz-security-token"]; ok {
		t.Error("x-amz-security-token sent without AWS_SESSION_TOKEN")
	}

	delete(environ, "AWS_ACCESS_KEY_ID")
	if _, _, err := mech.Authenticate(t.Context(), mskBroker); err == nil || !strings.Contains(err.Error(), "AWS_ACCESS_KEY_ID is not set") {
		t.Errorf("Authenticate without AWS_ACCESS_KEY_ID: error %v, want one naming it", err)
	}
}

func TestAWSMSKIAMConfig(t *testing.T) {
	t.Parallel()
	cfg, err := loadConfig(mapEnv(awsEnv()))
	if err != nil {
		t.Fatalf("an MSK broker names its region, no AWS_REGION needed: %v", err)
	}
	if cfg.KafkaSASLMechanism != saslAWSMSKIAM || cfg.KafkaAWSUserAgent != "outbox-relay/test" {
		t.Errorf("mechanism %q, user agent %q", cfg.KafkaSASLMechanism, cfg.KafkaAWSUserAgent)
	}
	for _, region := range []string{"AWS_REGION", "AWS_DEFAULT_REGION"} {
		environ := awsEnv()
		environ["RELAY_KAFKA_BROKERS"] = "kafka.internal:9098"
		environ[region] = "eu-west-1"
		if _, err := loadConfig(mapEnv(environ)); err != nil {
			t.Errorf("a broker behind a private name with %s: %v", region, err)
		}
	}
	for host, want := range map[string]bool{
		"b-1.x.abc.c2.kafka.eu-west-1.amazonaws.com":     true,
		"b-2.x.abc.c3.kafka.cn-north-1.amazonaws.com.cn": true,
		"amazonaws.com": false,
		"kafka.eu-west-1.amazonaws.com.evil.example": false,
		"localhost": false,
	} {
		if got := awsRegionInHost(host); got != want {
			t.Errorf("awsRegionInHost(%q) = %v, want %v", host, got, want)
		}
	}
	var buf strings.Builder
	logKafkaSecurityWarnings(cfg.newLogger(&buf), cfg)
	if !strings.Contains(buf.String(), `"msg":"kafka_aws_msk_iam_without_tls"`) {
		t.Errorf("no warning about AWS_MSK_IAM without TLS:\n%s", buf.String())
	}
	if strings.Contains(buf.String(), "wJalrXUtnFEMI") {
		t.Errorf("log shows the secret key:\n%s", buf.String())
	}
	if sec := cfg.withoutKafkaSecurity(); sec.kafkaSecured() || sec.KafkaAWSUserAgent != "" {
		t.Errorf("withoutKafkaSecurity left %+v", sec)
	}
}

// The relay's Kafka client, configured for AWS_MSK_IAM, authenticates over
// the wire before it produces. kfake has no AWS_MSK_IAM, so the test plays
// MSK's part of the exchange (the handshake, then accepting the signed
// request, which it checks as MSK would, by its signature) and leaves
// everything else to kfake.
//
// Not parallel: franz-go reads the region of a broker named by IP address
// from the process environment (AWS_REGION), which t.Setenv sets.
func TestAWSMSKIAMOverTheWire(t *testing.T) {
	t.Setenv("AWS_REGION", "eu-central-1")
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "orders"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)

	var (
		mu         sync.Mutex
		mechanisms []string
		messages   [][]byte
	)
	cluster.ControlKey(kmsg.SASLHandshake.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		r := req.(*kmsg.SASLHandshakeRequest)
		mu.Lock()
		mechanisms = append(mechanisms, r.Mechanism)
		mu.Unlock()
		resp := r.ResponseKind().(*kmsg.SASLHandshakeResponse)
		resp.SupportedMechanisms = []string{"AWS_MSK_IAM"}
		return resp, nil, true
	})
	cluster.ControlKey(kmsg.SASLAuthenticate.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		r := req.(*kmsg.SASLAuthenticateRequest)
		mu.Lock()
		messages = append(messages, r.SASLAuthBytes)
		mu.Unlock()
		resp := r.ResponseKind().(*kmsg.SASLAuthenticateResponse)
		resp.SASLAuthBytes = []byte(`{"version":"2020_10_22","request-id":"test"}`)
		return resp, nil, true
	})

	environ := awsEnv()
	environ["AWS_REGION"] = "eu-central-1"
	if err := connect(t, cluster.ListenAddrs(), environ); err != nil {
		t.Fatalf("produce with AWS_MSK_IAM: %v", err)
	}

	mu.Lock()
	defer mu.Unlock()
	if len(messages) == 0 {
		t.Fatal("the client produced without authenticating")
	}
	for _, m := range mechanisms {
		if m != "AWS_MSK_IAM" {
			t.Errorf("handshake for mechanism %q, want AWS_MSK_IAM", m)
		}
	}
	host, _, _ := net.SplitHostPort(cluster.ListenAddrs()[0])
	for _, m := range messages {
		parseMSKChallenge(t, m).checkSigned(t, host, "eu-central-1", "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session/token+with=odd chars")
	}
}
