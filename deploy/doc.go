// Package deploy holds the tests of the deployment files beside it: the Helm
// chart under helm/outbox-relay. It is a module of its own so that Helm's
// and Kubernetes' packages stay out of the relay's module.
package deploy
