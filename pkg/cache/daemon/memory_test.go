package daemon

import "testing"

// TestReturnMemoryOnlyWhenIdle: free heap goes back to the system after a
// quiet period only, and only when there is enough of it to matter (a
// busy daemon forces no collection).
func TestReturnMemoryOnlyWhenIdle(t *testing.T) {
	for _, c := range []struct {
		allocated, free, live uint64
		want                  bool
	}{
		{allocated: 0, free: 64 << 20, live: 20 << 20, want: true},
		{allocated: idleAllocs - 1, free: minReturn, live: 20 << 20, want: true},
		{allocated: idleAllocs, free: 64 << 20, live: 20 << 20, want: false}, // busy
		{allocated: 100 << 20, free: 1 << 30, live: 20 << 20, want: false},   // busy
		{allocated: 0, free: minReturn - 1, live: 1 << 20, want: false},      // too little to matter
		// A large heap: a collection costs more, an eighth of it is
		// the least worth one.
		{allocated: 0, free: 24 << 20, live: 200 << 20, want: false},
		{allocated: 0, free: 25 << 20, live: 200 << 20, want: true},
	} {
		if got := returnMemory(c.allocated, c.free, c.live); got != c.want {
			t.Errorf("returnMemory(allocated %d, free %d, live %d) = %v, want %v", c.allocated, c.free, c.live, got, c.want)
		}
	}
}
