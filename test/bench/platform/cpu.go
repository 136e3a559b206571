package main

// cpuPerGiB is the CPU seconds the system's serving process spent per GiB
// its readers read, over the sweep steps of one phase; ok is false when
// the process's time was not measured.
func (r *report) cpuPerGiB(system, phase string) (v float64, ok bool) {
	var cpu float64
	var bytes int64
	for _, x := range r.results {
		if x.system == system && x.phase == phase {
			if x.cpu < 0 {
				return 0, false
			}
			cpu += x.cpu
			bytes += x.bytes
		}
	}
	if bytes == 0 {
		return 0, false
	}
	return cpu / (float64(bytes) / (1 << 30)), true
}
