package igbutton_test

import (
	"os"
	"testing"

	"github.com/igbutton/igbutton/clients/go/igbutton"
)

// The embedded copy must be the repository's one service config, which the
// Java build ships too (`make clients` copies it).
func TestServiceConfigIsTheSharedOne(t *testing.T) {
	shared, err := os.ReadFile("../../service_config.json")
	if err != nil {
		t.Fatal(err)
	}
	if igbutton.ServiceConfig != string(shared) {
		t.Fatal("igbutton/service_config.json differs from clients/service_config.json: run `make clients`")
	}
}
