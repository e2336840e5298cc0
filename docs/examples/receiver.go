// A routing endpoint for sms-ingress deliveries (docs/DELIVERY.md), in Go.
//
//	go mod init receiver && go get github.com/standard-webhooks/standard-webhooks/libraries
//	go run receiver.go ROUTE.whsec 127.0.0.1:8602
package main

import (
	"encoding/json"
	"io"
	"log"
	"net/http"
	"os"
	"strings"
	"sync"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

func main() {
	raw, err := os.ReadFile(os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	// The first line is the current secret; during a rotation sms-ingress signs with both.
	secret := strings.TrimSpace(strings.SplitN(string(raw), "\n", 2)[0])
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		log.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]bool{} // use a durable store (a unique key in your database) in production
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if err := wh.Verify(body, r.Header); err != nil {
			log.Printf("rejected: %v", err)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		id := r.Header.Get("webhook-id")
		mu.Lock()
		first := !seen[id]
		seen[id] = true
		mu.Unlock()
		if first {
			var msg struct {
				Offset uint64         `json:"offset"`
				Kind   string         `json:"kind"`
				Number string         `json:"number"`
				Params map[string]any `json:"params"`
			}
			_ = json.Unmarshal(body, &msg)
			log.Printf("%s offset=%d kind=%s number=%s body=%v", id, msg.Offset, msg.Kind, msg.Number, msg.Params["Body"])
		}
		w.WriteHeader(http.StatusNoContent) // any 2xx: sms-ingress moves the cursor on
	})
	log.Fatal(http.ListenAndServe(os.Args[2], nil))
}
