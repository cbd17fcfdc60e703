// Command sample-app-go is the small HTTP service devloop's docs and tests build and deploy.
//
// It answers GET / with a greeting built from HELLO_MSG, so a changed environment variable or a
// changed source line is visible with one request after a rollout.
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
)

// greeting is the body of GET /; an unset HELLO_MSG greets the world.
func greeting(msg string) string {
	if msg == "" {
		msg = "stranger"
	}
	return fmt.Sprintf("Hello %s!\n", msg)
}

func handler(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprint(w, greeting(os.Getenv("HELLO_MSG")))
}

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	http.HandleFunc("/", handler)
	log.Printf("sample-app-go listening on :%s", port)
	log.Fatal(http.ListenAndServe(":"+port, nil))
}
