// etcd-campaigner: one campaigner of an etcd election, the etcd counterpart of
// examples/echo.rs for scripts/side_by_side.sh.
//
// It opens a session with a 2 s lease (etcd's minimum TTL), campaigns under an election
// prefix, and while it leads prints one line every --interval to stdout:
//
//	<unix ms> leader <name> pid: <pid>
//
// On SIGTERM or SIGINT it stops printing, resigns (deletes its key, so the next
// campaigner is elected at once) and exits. After kill -9 the next campaigner is elected
// only once etcd expires the dead one's lease. The lifecycle goes to stderr.
//
// It builds against Debian's golang-etcd-server-dev (etcd 3.4) without modules:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o campaigner main.go
//	./campaigner --endpoints 127.0.0.1:23790 --name c1
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.etcd.io/etcd/clientv3/concurrency"
)

func main() {
	endpoints := flag.String("endpoints", "127.0.0.1:23790", "etcd client endpoints, comma-separated")
	prefix := flag.String("election", "/side-by-side", "election key prefix")
	name := flag.String("name", "", "campaigner name (the value it proclaims)")
	ttl := flag.Int("ttl", 2, "session lease TTL in seconds (etcd's minimum is 2)")
	interval := flag.Duration("interval", 100*time.Millisecond, "how often to print while leading")
	flag.Parse()
	if *name == "" {
		*name = fmt.Sprintf("pid-%d", os.Getpid())
	}
	log.SetFlags(log.Lmicroseconds)
	log.SetPrefix(*name + " ")

	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   strings.Split(*endpoints, ","),
		DialTimeout: 5 * time.Second,
	})
	if err != nil {
		log.Fatalf("connect: %v", err)
	}
	defer cli.Close()

	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, os.Interrupt)
	go func() {
		s := <-sigs
		log.Printf("got %v", s)
		cancel()
	}()

	for ctx.Err() == nil {
		s, err := concurrency.NewSession(cli, concurrency.WithTTL(*ttl))
		if err != nil {
			log.Printf("session: %v", err)
			time.Sleep(200 * time.Millisecond)
			continue
		}
		e := concurrency.NewElection(s, *prefix)
		log.Printf("campaigning (lease %x, ttl %ds)", s.Lease(), *ttl)
		if err := e.Campaign(ctx, *name); err != nil {
			// On cancel Campaign has deleted its key already; closing the session revokes the lease.
			log.Printf("campaign: %v", err)
			s.Close()
			continue
		}
		log.Printf("elected")
		lead(ctx, s, e, *name, *interval)
		// Resign, then revoke the lease, each bounded.
		rctx, rcancel := context.WithTimeout(context.Background(), 2*time.Second)
		if err := e.Resign(rctx); err != nil {
			log.Printf("resign: %v", err)
		} else {
			log.Printf("resigned")
		}
		rcancel()
		s.Close()
	}
	log.Printf("exiting")
}

// lead prints one line at once and then every interval, until ctx is cancelled (a
// signal) or the session ends (its lease was lost).
func lead(ctx context.Context, s *concurrency.Session, e *concurrency.Election, name string, interval time.Duration) {
	pid := os.Getpid()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		fmt.Printf("%d leader %s pid: %d\n", time.Now().UnixMilli(), name, pid)
		select {
		case <-ctx.Done():
			return
		case <-s.Done():
			log.Printf("session lost; campaigning again")
			return
		case <-tick.C:
		}
	}
}
