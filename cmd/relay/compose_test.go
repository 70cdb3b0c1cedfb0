package main

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// No Docker engine runs on the CI machines, so this loads docker-compose.yml
// with the compose-spec loader (as docker compose would) and checks what the
// stack relies on, so the file cannot rot unnoticed.
func TestComposeFile(t *testing.T) {
	t.Parallel()
	opts, err := cli.NewProjectOptions([]string{"../../docker-compose.yml"},
		cli.WithWorkingDirectory("../.."), cli.WithName("outbox-relay"), cli.WithEnv(nil))
	if err != nil {
		t.Fatal(err)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		t.Fatalf("docker-compose.yml does not load: %v", err)
	}
	service := func(name string) types.ServiceConfig {
		t.Helper()
		s, err := project.GetService(name)
		if err != nil {
			t.Fatalf("service %s: %v", name, err)
		}
		return s
	}

	for _, name := range []string{"postgres", "kafka", "relay"} {
		if hc := service(name).HealthCheck; hc == nil || len(hc.Test) == 0 {
			t.Errorf("service %s has no healthcheck", name)
		}
	}
	if test := service("relay").HealthCheck.Test; !slices.Equal(test, []string{"CMD", "/relay", "healthcheck"}) {
		t.Errorf("relay healthcheck %v, want the relay's own healthcheck subcommand (distroless has no shell)", test)
	}
	if !strings.Contains(service("kafka").Image, "apache/kafka") {
		t.Errorf("kafka image %q, want the official apache/kafka", service("kafka").Image)
	}
	for _, name := range []string{"migrate", "relay"} {
		if service(name).Build == nil {
			t.Errorf("service %s is not built from the Dockerfile", name)
		}
	}

	wantDeps := map[string]map[string]string{
		"kafka-init":  {"kafka": types.ServiceConditionHealthy},
		"migrate":     {"postgres": types.ServiceConditionHealthy},
		"relay":       {"migrate": types.ServiceConditionCompletedSuccessfully, "kafka-init": types.ServiceConditionCompletedSuccessfully},
		"demo-writer": {"migrate": types.ServiceConditionCompletedSuccessfully},
	}
	for name, deps := range wantDeps {
		got := service(name).DependsOn
		for dep, cond := range deps {
			if got[dep].Condition != cond {
				t.Errorf("%s depends on %s with condition %q, want %q", name, dep, got[dep].Condition, cond)
			}
		}
	}

	// Every RELAY_* variable the stack sets is one the relay knows, and
	// the relay's configuration from it is valid.
	known := map[string]bool{}
	for _, v := range ConfigVars() {
		known[v.Name] = true
	}
	for _, s := range project.Services {
		for k := range s.Environment {
			if strings.HasPrefix(k, envPrefix) && !known[k] {
				t.Errorf("service %s sets %s, which the relay does not read", s.Name, k)
			}
		}
	}
	env := map[string]string{}
	for k, v := range service("relay").Environment {
		if v != nil {
			env[k] = *v
		}
	}
	if _, err := loadConfig(mapEnv(env)); err != nil {
		t.Errorf("the relay service's environment is not a valid configuration: %v", err)
	}
}
