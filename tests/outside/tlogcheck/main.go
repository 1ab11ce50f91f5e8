// Command tlogcheck checks pd's Merkle roots, checkpoint notes and proofs with an
// implementation pd's authors did not write: Go's golang.org/x/mod/sumdb/tlog (RFC 6962
// trees and proofs) and sumdb/note (C2SP signed notes), as Debian packages them.
//
// It reads one JSON document on stdin (see input), runs every check, prints a JSON summary
// on stdout naming each failure, and exits 0 when all held, 1 when any failed and 2 when the
// input is unreadable. Built in GOPATH mode, offline, by tests/outside.rs.
package main

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// input is what pd produced: the leaf data and everything to check against it.
type input struct {
	// Origin is the checkpoints' first line, `pd.ledger/<ledger id hex>`.
	Origin string `json:"origin"`
	// Leaves are the entry ids (hex, 32 bytes) in seq order.
	Leaves []string `json:"leaves"`
	// Roots are the tree heads pd reported, one per size.
	Roots []root `json:"roots"`
	// Notes are signed checkpoint notes, each with the verifier key to open it with.
	Notes []signedNote `json:"notes"`
	// Inclusions are `pd ledger prove` audit paths.
	Inclusions []inclusion `json:"inclusions"`
	// Consistencies are `pd ledger consistency` paths.
	Consistencies []consistency `json:"consistencies"`
}

type root struct {
	Size int64  `json:"size"`
	Root string `json:"root"`
}

type signedNote struct {
	Name string `json:"name"`
	Note string `json:"note"`
	Vkey string `json:"vkey"`
}

type inclusion struct {
	Name   string   `json:"name"`
	Index  int64    `json:"index"`
	Size   int64    `json:"size"`
	Root   string   `json:"root"`
	Hashes []string `json:"hashes"`
}

type consistency struct {
	Name    string   `json:"name"`
	OldSize int64    `json:"old_size"`
	OldRoot string   `json:"old_root"`
	NewSize int64    `json:"new_size"`
	NewRoot string   `json:"new_root"`
	Hashes  []string `json:"hashes"`
}

// summary counts the checks that held and names the ones that failed.
type summary struct {
	Leaves        int      `json:"leaves"`
	Roots         int      `json:"roots"`
	Notes         int      `json:"notes"`
	Inclusions    int      `json:"inclusions"`
	Consistencies int      `json:"consistencies"`
	Failures      []string `json:"failures"`
}

// tree holds the stored hashes tlog asks to keep for the leaves appended so far.
type tree struct {
	size   int64
	stored []tlog.Hash
}

func (t *tree) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for i, x := range indexes {
		if x < 0 || x >= int64(len(t.stored)) {
			return nil, fmt.Errorf("no stored hash %d", x)
		}
		out[i] = t.stored[x]
	}
	return out, nil
}

func (t *tree) append(data []byte) error {
	hashes, err := tlog.StoredHashes(t.size, data, t)
	if err != nil {
		return err
	}
	t.stored = append(t.stored, hashes...)
	t.size++
	return nil
}

// head is tlog's root of the first size leaves.
func (t *tree) head(size int64) (tlog.Hash, error) {
	if size < 1 || size > t.size {
		return tlog.Hash{}, fmt.Errorf("size %d is outside 1..%d leaves", size, t.size)
	}
	return tlog.TreeHash(size, t)
}

func parseHash(s string) (tlog.Hash, error) {
	var h tlog.Hash
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(h) {
		return h, fmt.Errorf("%q is not 32 bytes of hex", s)
	}
	copy(h[:], b)
	return h, nil
}

func parseHashes(ss []string) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(ss))
	for i, s := range ss {
		h, err := parseHash(s)
		if err != nil {
			return nil, err
		}
		out[i] = h
	}
	return out, nil
}

// checker runs the checks against one tree and collects what failed.
type checker struct {
	in  *input
	t   *tree
	sum summary
}

func (c *checker) fail(format string, args ...interface{}) {
	c.sum.Failures = append(c.sum.Failures, fmt.Sprintf(format, args...))
}

// matchesHead reports (as a failure) a root that differs from tlog's.
func (c *checker) matchesHead(what string, size int64, got tlog.Hash) bool {
	want, err := c.t.head(size)
	if err != nil {
		c.fail("%s: %v", what, err)
		return false
	}
	if got != want {
		c.fail("%s: root %x of size %d differs from tlog's tree hash %x", what, got[:], size, want[:])
		return false
	}
	return true
}

func (c *checker) roots() {
	for _, r := range c.in.Roots {
		what := fmt.Sprintf("pd root of size %d", r.Size)
		h, err := parseHash(r.Root)
		if err != nil {
			c.fail("%s: %v", what, err)
		} else if c.matchesHead(what, r.Size, h) {
			c.sum.Roots++
		}
	}
}

func (c *checker) notes() {
	for _, n := range c.in.Notes {
		what := "note " + n.Name
		v, err := note.NewVerifier(n.Vkey)
		if err != nil {
			c.fail("%s: verifier key: %v", what, err)
			continue
		}
		opened, err := note.Open([]byte(n.Note), note.VerifierList(v))
		if err != nil {
			c.fail("%s: note.Open: %v", what, err)
			continue
		}
		if name := opened.Sigs[0].Name; name != c.in.Origin {
			c.fail("%s: signed as %q, not as the origin %q", what, name, c.in.Origin)
			continue
		}
		size, h, err := c.checkpointBody(opened.Text)
		if err != nil {
			c.fail("%s: %v", what, err)
		} else if c.matchesHead(what, size, h) {
			c.sum.Notes++
		}
	}
}

// checkpointBody parses a tlog-checkpoint body: origin, decimal size, base64 root, then
// extension lines.
func (c *checker) checkpointBody(text string) (int64, tlog.Hash, error) {
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) < 3 {
		return 0, tlog.Hash{}, fmt.Errorf("checkpoint body has %d lines, want origin, size, root", len(lines))
	}
	if lines[0] != c.in.Origin {
		return 0, tlog.Hash{}, fmt.Errorf("origin %q, want %q", lines[0], c.in.Origin)
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || strconv.FormatInt(size, 10) != lines[1] {
		return 0, tlog.Hash{}, fmt.Errorf("size line %q is not a decimal number", lines[1])
	}
	var h tlog.Hash
	b, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(b) != len(h) {
		return 0, tlog.Hash{}, fmt.Errorf("root line %q is not 32 bytes of base64", lines[2])
	}
	copy(h[:], b)
	return size, h, nil
}

func (c *checker) inclusions() {
	for _, p := range c.in.Inclusions {
		what := fmt.Sprintf("inclusion %s (leaf %d of %d)", p.Name, p.Index, p.Size)
		th, err1 := parseHash(p.Root)
		path, err2 := parseHashes(p.Hashes)
		if err1 != nil || err2 != nil {
			c.fail("%s: %v %v", what, err1, err2)
			continue
		}
		if p.Index < 0 || p.Index >= int64(len(c.in.Leaves)) {
			c.fail("%s: no such leaf", what)
			continue
		}
		rootOK := c.matchesHead(what, p.Size, th)
		leaf, _ := hex.DecodeString(c.in.Leaves[p.Index])
		err := tlog.CheckRecord(tlog.RecordProof(path), p.Size, th, p.Index, tlog.RecordHash(leaf))
		if err != nil {
			c.fail("%s: tlog.CheckRecord: %v", what, err)
		} else if rootOK {
			c.sum.Inclusions++
		}
	}
}

func (c *checker) consistencies() {
	for _, p := range c.in.Consistencies {
		what := fmt.Sprintf("consistency %s (%d → %d)", p.Name, p.OldSize, p.NewSize)
		oh, err1 := parseHash(p.OldRoot)
		nh, err2 := parseHash(p.NewRoot)
		path, err3 := parseHashes(p.Hashes)
		if err1 != nil || err2 != nil || err3 != nil {
			c.fail("%s: %v %v %v", what, err1, err2, err3)
			continue
		}
		oldOK := c.matchesHead(what+" old", p.OldSize, oh)
		newOK := c.matchesHead(what+" new", p.NewSize, nh)
		err := tlog.CheckTree(tlog.TreeProof(path), p.NewSize, nh, p.OldSize, oh)
		if err != nil {
			c.fail("%s: tlog.CheckTree: %v", what, err)
		} else if oldOK && newOK {
			c.sum.Consistencies++
		}
	}
}

func run() (summary, error) {
	var in input
	dec := json.NewDecoder(os.Stdin)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&in); err != nil {
		return summary{}, fmt.Errorf("reading the input JSON: %v", err)
	}
	t := &tree{}
	for i, s := range in.Leaves {
		b, err := hex.DecodeString(s)
		if err != nil || len(b) != 32 {
			return summary{}, fmt.Errorf("leaf %d: %q is not a 32-byte entry id in hex", i, s)
		}
		if err := t.append(b); err != nil {
			return summary{}, fmt.Errorf("leaf %d: tlog.StoredHashes: %v", i, err)
		}
	}
	c := &checker{in: &in, t: t, sum: summary{Leaves: len(in.Leaves), Failures: []string{}}}
	c.roots()
	c.notes()
	c.inclusions()
	c.consistencies()
	return c.sum, nil
}

func main() {
	sum, err := run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "tlogcheck:", err)
		os.Exit(2)
	}
	out, _ := json.MarshalIndent(sum, "", "  ")
	fmt.Println(string(out))
	for _, f := range sum.Failures {
		fmt.Fprintln(os.Stderr, "FAILED:", f)
	}
	if len(sum.Failures) > 0 {
		os.Exit(1)
	}
}
