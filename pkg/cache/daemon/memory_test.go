package daemon

import "testing"

// TestReturnMemoryOnlyWhenIdle: free heap goes back to the system after a
// quiet period only, and only when there is enough of it to matter (a
// busy daemon forces no collection).
func TestReturnMemoryOnlyWhenIdle(t *testing.T) {
	for _, c := range []struct {
		allocated, free uint64
		want            bool
	}{
		{allocated: 0, free: 64 << 20, want: true},
		{allocated: idleAllocs - 1, free: minReturn, want: true},
		{allocated: idleAllocs, free: 64 << 20, want: false}, // busy
		{allocated: 100 << 20, free: 1 << 30, want: false},   // busy
		{allocated: 0, free: minReturn - 1, want: false},     // too little to matter
	} {
		if got := returnMemory(c.allocated, c.free); got != c.want {
			t.Errorf("returnMemory(allocated %d, free %d) = %v, want %v", c.allocated, c.free, got, c.want)
		}
	}
}
