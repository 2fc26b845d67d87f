// Oracle: Prometheus's own parsers, for tests/local/test_flagtypes.py to
// compare coverage_exporter/flagtypes.py against on the same inputs.
// Reads JSON lines ["duration"|"bytes", text], writes JSON lines
// {"ok": bool, "value": int}. Built by testbed/build.sh oracle.
package main

import (
	"bufio"
	"encoding/json"
	"os"

	"github.com/alecthomas/units"
	"github.com/prometheus/common/model"
)

type answer struct {
	OK    bool  `json:"ok"`
	Value int64 `json:"value"`
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var query [2]string
		if err := json.Unmarshal(in.Bytes(), &query); err != nil {
			panic(err)
		}
		var a answer
		switch query[0] {
		case "duration":
			d, err := model.ParseDuration(query[1])
			a = answer{OK: err == nil, Value: int64(d)}
		case "bytes":
			b, err := units.ParseBase2Bytes(query[1])
			a = answer{OK: err == nil, Value: int64(b)}
		default:
			panic("unknown kind " + query[0])
		}
		if err := out.Encode(a); err != nil {
			panic(err)
		}
	}
	if err := in.Err(); err != nil {
		panic(err)
	}
}
