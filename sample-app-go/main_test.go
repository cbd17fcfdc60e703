package main

import (
	"net/http/httptest"
	"testing"
)

func TestGreetingUsesTheMessage(t *testing.T) {
	if got := greeting("carvel user"); got != "Hello carvel user!\n" {
		t.Fatalf("greeting = %q", got)
	}
}

func TestUnknownPathsAreNotFound(t *testing.T) {
	rec := httptest.NewRecorder()
	handler(rec, httptest.NewRequest("GET", "/nope", nil))
	if rec.Code != 404 {
		t.Fatalf("status = %d", rec.Code)
	}
}
