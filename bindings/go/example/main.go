// Command example shows the Go binding: a pool element serving TCP echo and a
// pool user that finds it through a registrar and talks to it.
//
//	rserpool registrar --asap tcp://127.0.0.1:3863 &
//	go run ./example -registrar tcp://127.0.0.1:3863 -mode pe    # one shell
//	go run ./example -registrar tcp://127.0.0.1:3863 -mode pu    # another
//	go run ./example -registrar tcp://127.0.0.1:3863             # both in one process
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"time"

	"example.org/rserpool/rserpool"
)

func main() {
	registrar := flag.String("registrar", "tcp://127.0.0.1:3863", "registrar URL")
	pool := flag.String("pool", "echo", "pool handle")
	mode := flag.String("mode", "demo", "pe (serve until interrupted), pu (one request) or demo (both)")
	msg := flag.String("message", "hello, pool", "what the pool user sends")
	flag.Parse()
	log.SetFlags(0)

	ctx, err := rserpool.NewContext(rserpool.Config{Registrars: []string{*registrar}})
	if err != nil {
		log.Fatal(err)
	}
	defer ctx.Close()

	switch *mode {
	case "pe":
		pe, ln := serve(ctx, *pool)
		defer ln.Close()
		fmt.Printf("PE %#08x serving %s in pool %q; ^C to stop\n", pe.ID, ln.Addr(), *pool)
		stop := make(chan os.Signal, 1)
		signal.Notify(stop, os.Interrupt)
		<-stop
		if err := pe.Deregister(); err != nil {
			log.Print(err)
		}
	case "pu":
		fmt.Println(request(ctx, *pool, *msg))
	case "demo":
		pe, ln := serve(ctx, *pool)
		defer ln.Close()
		fmt.Printf("PE %#08x registered\n", pe.ID)
		fmt.Printf("echo: %s\n", request(ctx, *pool, *msg))
		if err := pe.Deregister(); err != nil {
			log.Fatal(err)
		}
	default:
		log.Fatalf("unknown -mode %q", *mode)
	}
}

// serve starts a TCP echo server on an ephemeral loopback port and registers it.
func serve(ctx *rserpool.Context, pool string) (*rserpool.PoolElement, net.Listener) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	pe, err := ctx.RegisterPE(pool, rserpool.PEParams{Port: port, Addresses: []string{"127.0.0.1"}})
	if err != nil {
		log.Fatal(err)
	}
	return pe, ln
}

// request sends msg to a PE of the pool, failing over while servers refuse.
func request(ctx *rserpool.Context, pool, msg string) string {
	srv, err := ctx.GetPrimaryServer(pool)
	for err == nil {
		var c net.Conn
		if c, err = srv.Dial(5 * time.Second); err == nil {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			buf := make([]byte, len(msg))
			if _, err = c.Write([]byte(msg)); err == nil {
				if _, err = io.ReadFull(c, buf); err == nil {
					return string(buf)
				}
			}
		}
		log.Printf("PE %#08x at %s failed (%v); trying the next", srv.ID, srv.Address(), err)
		srv, err = ctx.GetNextServer(pool, srv.ID)
	}
	if errors.Is(err, rserpool.ErrUnknownPool) {
		log.Fatalf("no pool %q at the registrar", pool)
	}
	log.Fatal(err)
	return ""
}
