package memory_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	"github.com/lpmos/lpmos/store"
	"github.com/lpmos/lpmos/store/memory"
)

// Example writes and reads keys, and guards a write with a
// compare-and-swap transaction, as the task service does for every status
// change: the write happens only if the key is still at the revision the
// writer read.
func Example() {
	ctx := context.Background()
	st := memory.New()
	defer st.Close()

	rev, err := st.Put(ctx, "/demo/tasks/t1/status", []byte("pending"))
	if err != nil {
		log.Fatal(err)
	}
	kv, err := st.Get(ctx, "/demo/tasks/t1/status")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s = %s (written at revision %d, version %d)\n", kv.Key, kv.Value, rev, kv.Version)

	// Move pending → ready only if nobody wrote the key since we read it.
	res, err := st.Txn(ctx, store.Txn{
		If:   []store.Compare{store.ModRevisionIs(kv.Key, kv.ModRevision)},
		Then: []store.Op{store.OpPut(kv.Key, []byte("ready"))},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("first move succeeded:", res.Succeeded)

	// A second writer that read the same revision loses: nothing is written.
	res, err = st.Txn(ctx, store.Txn{
		If:   []store.Compare{store.ModRevisionIs(kv.Key, kv.ModRevision)},
		Then: []store.Op{store.OpPut(kv.Key, []byte("cancelled"))},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("stale move succeeded:", res.Succeeded)

	kv, err = st.Get(ctx, "/demo/tasks/t1/status")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s = %s (version %d)\n", kv.Key, kv.Value, kv.Version)

	_, err = st.Get(ctx, "/demo/tasks/t2/status")
	fmt.Println("missing key is ErrNotFound:", errors.Is(err, store.ErrNotFound))

	res2, err := st.List(ctx, "/demo/tasks/", store.ListOptions{})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("keys under /demo/tasks/:", len(res2.KVs))
	// Output:
	// /demo/tasks/t1/status = pending (written at revision 2, version 1)
	// first move succeeded: true
	// stale move succeeded: false
	// /demo/tasks/t1/status = ready (version 2)
	// missing key is ErrNotFound: true
	// keys under /demo/tasks/: 1
}

// ExampleStore_Watch follows the keys under a prefix from a past revision:
// the watch first replays what changed since then, in order, and then
// delivers new changes as they happen. A reader that lists at revision R
// and watches from R+1 misses nothing.
func ExampleStore_Watch() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := memory.New()
	defer st.Close()

	first, err := st.Put(ctx, "/demo/regions/dc1", []byte("up"))
	if err != nil {
		log.Fatal(err)
	}
	if _, err := st.Put(ctx, "/demo/regions/dc2", []byte("up")); err != nil {
		log.Fatal(err)
	}
	if _, _, err := st.Delete(ctx, "/demo/regions/dc1"); err != nil {
		log.Fatal(err)
	}

	ch := st.Watch(ctx, "/demo/regions/", first) // replays all three changes
	if _, err := st.Put(ctx, "/demo/regions/dc3", []byte("up")); err != nil {
		log.Fatal(err)
	}
	if _, err := st.Put(ctx, "/demo/other", []byte("not watched")); err != nil {
		log.Fatal(err)
	}

	for seen := 0; seen < 4; {
		resp, ok := <-ch
		if !ok || resp.Err != nil {
			log.Fatal("watch ended: ", resp.Err)
		}
		for _, ev := range resp.Events {
			fmt.Printf("%v %s %q at revision %d\n", ev.Type, ev.KV.Key, ev.KV.Value, ev.KV.ModRevision)
			seen++
		}
	}
	// Output:
	// PUT /demo/regions/dc1 "up" at revision 2
	// PUT /demo/regions/dc2 "up" at revision 3
	// DELETE /demo/regions/dc1 "" at revision 4
	// PUT /demo/regions/dc3 "up" at revision 5
}
