package memlimit

import (
	"errors"
	"io/fs"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestFrom(t *testing.T) {
	v2, v1 := cgroupFiles[0], cgroupFiles[1]
	tests := []struct {
		name    string
		env     string
		files   map[string]string
		want    Choice
		wantErr string
	}{
		{name: "cgroup v2 limit", files: map[string]string{v2: "268435456\n"},
			want: Choice{Limit: 241591910, Why: v2 + ` = "268435456": 90% of it`}},
		{name: "cgroup v1 limit", files: map[string]string{v1: "536870912\n"},
			want: Choice{Limit: 483183820, Why: v1 + ` = "536870912": 90% of it`}},
		{name: "v2 wins over v1", files: map[string]string{v2: "1000", v1: "2000"},
			want: Choice{Limit: 900, Why: v2 + ` = "1000": 90% of it`}},
		{name: "no limit in v2", files: map[string]string{v2: "max\n"},
			want: Choice{Why: v2 + ` = "max": no container memory limit`}},
		{name: "no limit in v1", files: map[string]string{v1: "9223372036854771712\n"},
			want: Choice{Why: v1 + ` = "9223372036854771712": no container memory limit`}},
		{name: "no cgroup", files: map[string]string{},
			want: Choice{Why: "no cgroup memory limit file"}},
		{name: "the environment wins", env: "200MiB", files: map[string]string{v2: "1000"},
			want: Choice{Why: `GOMEMLIMIT = "200MiB" from the environment`}},
		{name: "garbage", files: map[string]string{v2: "lots"},
			wantErr: v2 + ` = "lots": must be a positive number of bytes or max`},
		{name: "zero", files: map[string]string{v2: "0"},
			wantErr: v2 + ` = "0": must be a positive number of bytes or max`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			getenv := func(k string) string {
				if k == "GOMEMLIMIT" {
					return tt.env
				}
				return ""
			}
			readFile := func(path string) ([]byte, error) {
				if s, ok := tt.files[path]; ok {
					return []byte(s), nil
				}
				return nil, fs.ErrNotExist
			}
			got, err := From(getenv, readFile)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("choice (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFromUnreadable(t *testing.T) {
	_, err := From(func(string) string { return "" }, func(path string) ([]byte, error) {
		return nil, errors.New("permission denied")
	})
	if want := cgroupFiles[0] + ": permission denied"; err == nil || err.Error() != want {
		t.Errorf("error = %v, want %q", err, want)
	}
}
