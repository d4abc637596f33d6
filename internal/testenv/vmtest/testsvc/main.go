// Command testsvc is a service for end-to-end tests: it optionally waits for a dependency,
// serves /healthz, prints a numbered tick line at a fixed interval, and exits 0 on SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	name := flag.String("name", "svc", "name printed on each line")
	listen := flag.String("listen", "", "address to serve /healthz on")
	depends := flag.String("depends", "", "TCP address that must accept before we serve")
	tick := flag.Duration("tick", time.Second, "interval of the tick lines")
	flag.Parse()
	fmt.Printf("%s: starting\n", *name)
	if *depends != "" {
		for {
			c, err := net.DialTimeout("tcp", *depends, time.Second)
			if err == nil {
				c.Close()
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		fmt.Printf("%s: dependency %s up\n", *name, *depends)
	}
	var srv *http.Server
	if *listen != "" {
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", *name, err)
			os.Exit(1)
		}
		srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/healthz" {
				fmt.Fprintln(w, "ok")
				return
			}
			http.NotFound(w, r)
		})}
		go srv.Serve(ln)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	t := time.NewTicker(*tick)
	for i := 0; ; i++ {
		select {
		case s := <-sigs:
			fmt.Printf("%s: stopping on %s\n", *name, s)
			if srv != nil {
				srv.Shutdown(context.Background())
			}
			os.Exit(0)
		case <-t.C:
			fmt.Printf("%s: tick %d\n", *name, i)
		}
	}
}
