package deploy

import (
	"bufio"
	"bytes"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

const (
	chartDir  = "helm/outbox-relay"
	rulesFile = "prometheus/outbox-relay.rules.yml"
)

// required are the values a release must set.
func required() map[string]any {
	return map[string]any{
		"database": map[string]any{"existingSecret": "orders-db"},
		"kafka":    map[string]any{"brokers": "kafka-0.kafka:9092,kafka-1.kafka:9092"},
	}
}

// decoder decodes manifests strictly (unknown and duplicate fields are
// errors) into the Kubernetes API types and prometheus-operator's.
var decoder = sync.OnceValue(func() runtime.Decoder {
	s := runtime.NewScheme()
	if err := scheme.AddToScheme(s); err != nil {
		panic(err)
	}
	if err := monitoringv1.AddToScheme(s); err != nil {
		panic(err)
	}
	return serializer.NewCodecFactory(s, serializer.EnableStrict).UniversalDeserializer()
})

// render renders the chart as `helm template` does, with the chart's
// values schema, and decodes every manifest.
func render(t *testing.T, vals map[string]any) ([]runtime.Object, error) {
	t.Helper()
	chrt, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	install := action.NewInstall(new(action.Configuration))
	install.DryRun, install.ClientOnly, install.Replace = true, true, true
	install.ReleaseName, install.Namespace = "orders", "shop"
	rel, err := install.Run(chrt, vals)
	if err != nil {
		return nil, err
	}
	manifests := releaseutil.SplitManifests(rel.Manifest)
	var objs []runtime.Object
	for _, name := range slices.Sorted(maps.Keys(manifests)) {
		m := manifests[name]
		obj, _, err := decoder().Decode([]byte(m), nil, nil)
		if err != nil {
			t.Fatalf("manifest %s does not decode strictly: %v\n%s", name, err, m)
		}
		objs = append(objs, obj)
	}
	return objs, nil
}

func mustRender(t *testing.T, vals map[string]any) []runtime.Object {
	t.Helper()
	objs, err := render(t, vals)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	return objs
}

func only[T runtime.Object](t *testing.T, objs []runtime.Object) []T {
	t.Helper()
	var out []T
	for _, o := range objs {
		if x, ok := o.(T); ok {
			out = append(out, x)
		}
	}
	return out
}

func kinds(objs []runtime.Object) []string {
	var k []string
	for _, o := range objs {
		k = append(k, fmt.Sprintf("%T", o))
	}
	slices.Sort(k)
	return k
}

// relayVariables returns the relay's configuration variables, as
// `relay help config --markdown` lists them (the README's config table).
var relayVariables = sync.OnceValues(func() (map[string]bool, error) {
	cmd := exec.Command("go", "run", "./cmd/relay", "help", "config", "--markdown")
	cmd.Dir = ".."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("relay help config --markdown: %v\n%s", err, stderr.Bytes())
	}
	vars := map[string]bool{}
	row := regexp.MustCompile("^\\| `(RELAY_[A-Z0-9_]+)` \\|")
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if m := row.FindStringSubmatch(sc.Text()); m != nil {
			vars[m[1]] = true
		}
	}
	if len(vars) < 20 || !vars["RELAY_DATABASE_URL_FILE"] {
		return nil, fmt.Errorf("relay help config listed %d variables:\n%s", len(vars), out)
	}
	return vars, nil
})

// checkRelayContainer checks what every rendering must hold: env names the
// relay knows, secrets only through _FILE variables whose files are keys of
// mounted Secrets, the probes, a non-root read-only container with
// resources, and a grace period longer than the shutdown timeout by the
// margin.
func checkRelayContainer(t *testing.T, d *appsv1.Deployment, shutdown, margin int) map[string]string {
	t.Helper()
	vars, err := relayVariables()
	if err != nil {
		t.Fatal(err)
	}
	pod := d.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	env := map[string]string{}
	for _, e := range c.Env {
		if strings.HasPrefix(e.Name, "RELAY_") && !vars[e.Name] {
			t.Errorf("env %s is not a variable of the relay (relay help config)", e.Name)
		}
		if _, dup := env[e.Name]; dup {
			t.Errorf("env %s is set twice", e.Name)
		}
		env[e.Name] = e.Value
	}
	for _, secret := range []string{"RELAY_DATABASE_URL", "RELAY_KAFKA_SASL_PASSWORD"} {
		if _, ok := env[secret]; ok {
			t.Errorf("env %s holds a secret in the pod spec; use %s_FILE", secret, secret)
		}
	}
	if env["RELAY_DATABASE_URL_FILE"] == "" {
		t.Error("RELAY_DATABASE_URL_FILE is not set")
	}

	// Each _FILE variable names a key of a mounted Secret.
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	for name, value := range env {
		if !strings.HasSuffix(name, "_FILE") {
			continue
		}
		dir, key := path.Split(value)
		m, ok := mounts[strings.TrimSuffix(dir, "/")]
		if !ok {
			t.Errorf("%s=%s: nothing is mounted at %s", name, value, dir)
			continue
		}
		v := volumes[m.Name]
		if v.Secret == nil || !m.ReadOnly {
			t.Errorf("%s=%s: %s is not a read-only Secret volume", name, value, dir)
			continue
		}
		if items := v.Secret.Items; len(items) > 0 && !slices.ContainsFunc(items, func(i corev1.KeyToPath) bool { return i.Path == key }) {
			t.Errorf("%s=%s: Secret %s mounts no %s (items %v)", name, value, v.Secret.SecretName, key, items)
		}
	}

	if want := fmt.Sprintf("%ds", shutdown); env["RELAY_SHUTDOWN_TIMEOUT"] != want {
		t.Errorf("RELAY_SHUTDOWN_TIMEOUT=%q, want %q", env["RELAY_SHUTDOWN_TIMEOUT"], want)
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil || *g != int64(shutdown+margin) {
		t.Errorf("terminationGracePeriodSeconds %v, want %d (shutdown %ds + margin %ds)", g, shutdown+margin, shutdown, margin)
	}

	probe := func(name string, p *corev1.Probe, path string) {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != path || p.HTTPGet.Port.String() != "http" {
			t.Errorf("%s probe %+v, want GET %s on port http", name, p, path)
		}
	}
	probe("liveness", c.LivenessProbe, "/livez")
	probe("startup", c.StartupProbe, "/livez")
	probe("readiness", c.ReadinessProbe, "/readyz")
	if len(c.Ports) != 1 || c.Ports[0].Name != "http" || env["RELAY_HTTP_ADDR"] != fmt.Sprintf(":%d", c.Ports[0].ContainerPort) {
		t.Errorf("ports %v with RELAY_HTTP_ADDR=%q", c.Ports, env["RELAY_HTTP_ADDR"])
	}

	sc := c.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("container securityContext %+v: want non-root, read-only root, no privilege escalation, all capabilities dropped", sc)
	}
	if psc := pod.SecurityContext; psc == nil || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("pod securityContext %+v: want a non-zero runAsUser", psc)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
		t.Errorf("resources %+v: want cpu and memory requests and a memory limit", c.Resources)
	}
	return env
}

func TestChartDefaults(t *testing.T) {
	t.Parallel()
	objs := mustRender(t, required())
	if got, want := kinds(objs), []string{"*v1.Deployment", "*v1.PodDisruptionBudget", "*v1.Service", "*v1.ServiceAccount"}; !slices.Equal(got, want) {
		t.Fatalf("objects %v, want %v", got, want)
	}
	d := only[*appsv1.Deployment](t, objs)[0]
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Errorf("replicas %v, want 2", d.Spec.Replicas)
	}
	env := checkRelayContainer(t, d, 30, 15)
	if env["RELAY_KAFKA_BROKERS"] != "kafka-0.kafka:9092,kafka-1.kafka:9092" {
		t.Errorf("RELAY_KAFKA_BROKERS=%q", env["RELAY_KAFKA_BROKERS"])
	}
	if env["RELAY_DATABASE_URL_FILE"] != "/etc/outbox-relay/database/database-url" {
		t.Errorf("RELAY_DATABASE_URL_FILE=%q", env["RELAY_DATABASE_URL_FILE"])
	}
	svc := only[*corev1.Service](t, objs)[0]
	if !maps.Equal(svc.Spec.Selector, d.Spec.Template.Labels) {
		t.Errorf("service selector %v does not select the pods (%v)", svc.Spec.Selector, d.Spec.Template.Labels)
	}
}

func TestChartWithEverything(t *testing.T) {
	t.Parallel()
	vals := required()
	vals["kafka"] = map[string]any{
		"brokers": "b-1.msk:9096",
		"tls":     map[string]any{"enabled": true, "existingSecret": "kafka-ca", "certKey": "tls.crt", "keyKey": "tls.key"},
		"sasl":    map[string]any{"mechanism": "SCRAM-SHA-512", "username": "relay", "existingSecret": "kafka-sasl"},
	}
	vals["replicaCount"] = 3
	vals["shutdownTimeoutSeconds"] = 120
	vals["env"] = map[string]any{"RELAY_BATCH_SIZE": 500, "RELAY_VERIFY_INTERVAL": "1h", "RELAY_REQUIRE_DURABLE_TOPICS": true}
	vals["serviceMonitor"] = map[string]any{"enabled": true, "labels": map[string]any{"release": "kube-prometheus"}}
	vals["prometheusRule"] = map[string]any{"enabled": true}
	objs := mustRender(t, vals)

	d := only[*appsv1.Deployment](t, objs)[0]
	if *d.Spec.Replicas != 3 {
		t.Errorf("replicas %d, want 3", *d.Spec.Replicas)
	}
	env := checkRelayContainer(t, d, 120, 15)
	for name, want := range map[string]string{
		"RELAY_KAFKA_TLS": "true", "RELAY_KAFKA_TLS_CA_FILE": "/etc/outbox-relay/kafka-tls/ca.crt",
		"RELAY_KAFKA_TLS_CERT_FILE": "/etc/outbox-relay/kafka-tls/tls.crt", "RELAY_KAFKA_TLS_KEY_FILE": "/etc/outbox-relay/kafka-tls/tls.key",
		"RELAY_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "RELAY_KAFKA_SASL_USERNAME": "relay",
		"RELAY_KAFKA_SASL_PASSWORD_FILE": "/etc/outbox-relay/kafka-sasl/password",
		"RELAY_BATCH_SIZE":               "500", "RELAY_VERIFY_INTERVAL": "1h", "RELAY_REQUIRE_DURABLE_TOPICS": "true",
	} {
		if env[name] != want {
			t.Errorf("%s=%q, want %q", name, env[name], want)
		}
	}

	sm := only[*monitoringv1.ServiceMonitor](t, objs)
	if len(sm) != 1 || len(sm[0].Spec.Endpoints) != 1 || sm[0].Spec.Endpoints[0].Port != "http" || sm[0].Spec.Endpoints[0].Path != "/metrics" || sm[0].Labels["release"] != "kube-prometheus" {
		t.Fatalf("ServiceMonitor %+v", sm)
	}
	if !maps.Equal(sm[0].Spec.Selector.MatchLabels, only[*corev1.Service](t, objs)[0].Labels) &&
		!isSubset(sm[0].Spec.Selector.MatchLabels, only[*corev1.Service](t, objs)[0].Labels) {
		t.Errorf("ServiceMonitor selects %v, the Service is labelled %v", sm[0].Spec.Selector.MatchLabels, only[*corev1.Service](t, objs)[0].Labels)
	}

	// The PrometheusRule carries deploy/prometheus's rules, unchanged.
	pr := only[*monitoringv1.PrometheusRule](t, objs)
	if len(pr) != 1 {
		t.Fatalf("%d PrometheusRules, want 1", len(pr))
	}
	data, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var file monitoringv1.PrometheusRuleSpec
	if err := yaml.UnmarshalStrict(data, &file); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	got, _ := yaml.Marshal(pr[0].Spec)
	want, _ := yaml.Marshal(file)
	if !bytes.Equal(got, want) {
		t.Errorf("the PrometheusRule's rules differ from %s:\n%s\nwant:\n%s", rulesFile, got, want)
	}
	if len(file.Groups) == 0 || len(file.Groups[0].Rules) < 8 {
		t.Errorf("%s: %d groups", rulesFile, len(file.Groups))
	}
}

func isSubset(sub, of map[string]string) bool {
	for k, v := range sub {
		if of[k] != v {
			return false
		}
	}
	return true
}

func TestChartRefusesBadValues(t *testing.T) {
	t.Parallel()
	with := func(edit func(v map[string]any)) map[string]any {
		v := required()
		edit(v)
		return v
	}
	tests := []struct {
		name string
		vals map[string]any
		want string
	}{
		{"no database secret", map[string]any{"kafka": map[string]any{"brokers": "k:9092"}}, "database.existingSecret is required"},
		{"no brokers", map[string]any{"database": map[string]any{"existingSecret": "db"}}, "kafka.brokers is required"},
		{"plain database URL", with(func(v map[string]any) { v["env"] = map[string]any{"RELAY_DATABASE_URL": "postgres://u:secret@db/x"} }), "env.RELAY_DATABASE_URL: the chart sets it"},
		{"chart's own variable", with(func(v map[string]any) { v["env"] = map[string]any{"RELAY_SHUTDOWN_TIMEOUT": "60s"} }), "env.RELAY_SHUTDOWN_TIMEOUT: the chart sets it"},
		{"not a relay variable", with(func(v map[string]any) { v["env"] = map[string]any{"GOMAXPROCS": "2"} }), "GOMAXPROCS"},
		{"shutdown timeout as a duration", with(func(v map[string]any) { v["shutdownTimeoutSeconds"] = "30s" }), "shutdownTimeoutSeconds"},
		{"zero shutdown timeout", with(func(v map[string]any) { v["shutdownTimeoutSeconds"] = 0 }), "shutdownTimeoutSeconds"},
	}
	for _, tt := range tests {
		_, err := render(t, tt.vals)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want one containing %q", tt.name, err, tt.want)
		}
	}
}

func TestChartLints(t *testing.T) {
	t.Parallel()
	res := action.NewLint().Run([]string{chartDir}, required())
	for _, m := range res.Messages {
		t.Log(m)
	}
	if len(res.Errors) > 0 {
		t.Errorf("helm lint: %v", res.Errors)
	}
}
