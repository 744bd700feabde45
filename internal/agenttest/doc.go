// Package agenttest holds the agent's end-to-end tests: the real runner
// and installers against a real in-process region over the memory store.
// They live here because the dependency rules keep agent/... (tests
// included) from importing region and task, and region's tests from
// importing the installers.
package agenttest
