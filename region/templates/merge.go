package templates

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"
)

// The operator's user-data (Data.UserData) is merged into the cloud-config
// LPMOS writes (the cloud-init and nocloud-user-data templates, and the
// user-data key of autoinstall), so that an operator can add anything
// cloud-init knows without giving up LPMOS's keys, host name and first-boot
// report. The operator's document is the base and LPMOS's keys are added
// to it:
//
//   - a key only one side has is kept;
//   - lists are concatenated, the operator's items first, and an item of
//     LPMOS's equal to one of the operator's is not repeated (so an SSH
//     key given both ways is written once);
//   - mappings (chpasswd, phone_home, ...) merge key by key, by these
//     same rules;
//   - where both give a scalar, the operator's value stays, except for
//     hostname and fqdn when the task names the host: the task's host name
//     is also the meta-data's local-hostname and must agree with it.
//
// Comments and the operator's scalars survive as written (a YAML 1.1
// "yes" stays "yes" for cloud-init's PyYAML), since the merge works on
// the YAML node tree. The merge checks YAML, not cloud-init's schema: a
// user_data cloud-init refuses (say permissions: 0644 unquoted) is
// refused by cloud-init on the machine.

// parseUserData checks an operator's cloud-config and returns its
// top-level mapping.
func parseUserData(s string) (*yaml.Node, error) {
	if len(s) > maxUserData {
		return nil, fmt.Errorf("%d bytes, at most %d allowed", len(s), maxUserData)
	}
	first, _, _ := strings.Cut(s, "\n")
	if strings.TrimRight(first, " \t\r") != "#cloud-config" {
		return nil, errors.New("must start with the line #cloud-config")
	}
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(s), &doc); err != nil {
		return nil, fmt.Errorf("not valid YAML: %w", err)
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, errors.New("the cloud-config must be a YAML mapping")
	}
	m := doc.Content[0]
	// The #cloud-config line is a comment to YAML; the merged output
	// writes its own.
	doc.HeadComment = dropCloudConfigLine(doc.HeadComment)
	m.HeadComment = dropCloudConfigLine(m.HeadComment)
	if len(m.Content) > 0 {
		m.Content[0].HeadComment = dropCloudConfigLine(m.Content[0].HeadComment)
	}
	return m, nil
}

func dropCloudConfigLine(c string) string {
	first, rest, _ := strings.Cut(c, "\n")
	if strings.TrimSpace(first) == "#cloud-config" {
		return strings.TrimLeft(rest, "\n")
	}
	return c
}

// mergeInto merges ours into base (both mappings) by the rules above;
// authoritative names the keys whose scalars ours wins.
func mergeInto(base, ours *yaml.Node, authoritative map[string]bool) {
	for i := 0; i+1 < len(ours.Content); i += 2 {
		k, v := ours.Content[i], ours.Content[i+1]
		j := mappingIndex(base, k.Value)
		if j < 0 {
			base.Content = append(base.Content, k, v)
			continue
		}
		bv := base.Content[j+1]
		switch {
		case bv.Kind == yaml.SequenceNode && v.Kind == yaml.SequenceNode:
			for _, item := range v.Content {
				if !containsScalar(bv, item) {
					bv.Content = append(bv.Content, item)
				}
			}
		case bv.Kind == yaml.MappingNode && v.Kind == yaml.MappingNode:
			mergeInto(bv, v, nil)
		case authoritative[k.Value]:
			base.Content[j+1] = v
		}
	}
}

func mappingIndex(m *yaml.Node, key string) int {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Kind == yaml.ScalarNode && m.Content[i].Value == key {
			return i
		}
	}
	return -1
}

func containsScalar(seq, item *yaml.Node) bool {
	if item.Kind != yaml.ScalarNode {
		return false
	}
	for _, x := range seq.Content {
		if x.Kind == yaml.ScalarNode && x.Value == item.Value {
			return true
		}
	}
	return false
}

// mergeUserData returns rendered (a cloud-config LPMOS wrote, "#cloud-config"
// first) with the operator's user-data merged in: at the top level, or
// for autoinstall into autoinstall.user-data.
func (d Data) mergeUserData(name string, rendered []byte) ([]byte, error) {
	base, err := parseUserData(d.UserData)
	if err != nil {
		return nil, fmt.Errorf("%w: UserData: %w", ErrInvalid, err)
	}
	var doc yaml.Node
	err = yaml.Unmarshal(rendered, &doc)
	if err == nil && len(doc.Content) == 0 {
		// Only comments: nothing of LPMOS's to add.
		doc = yaml.Node{Kind: yaml.DocumentNode, HeadComment: doc.HeadComment, Content: []*yaml.Node{{Kind: yaml.MappingNode}}}
	}
	if err != nil || doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%w: %s: merging the task's user_data needs the rendered file to be a YAML mapping (err %v)", ErrTemplate, name, err)
	}
	top := doc.Content[0]
	// The rendered file's head comment (after #cloud-config) heads the
	// merged file, wherever the parser hung it.
	header := dropCloudConfigLine(doc.HeadComment)
	doc.HeadComment = ""
	if len(top.Content) > 0 {
		if c := dropCloudConfigLine(top.Content[0].HeadComment); c != "" {
			header = strings.TrimSpace(header + "\n" + c)
		}
		top.Content[0].HeadComment = ""
	}
	authoritative := map[string]bool{}
	if d.hostnameGiven {
		authoritative["hostname"], authoritative["fqdn"] = true, true
	}
	if name == Autoinstall {
		ai := valueOf(top, "autoinstall")
		if ai == nil || ai.Kind != yaml.MappingNode {
			return nil, fmt.Errorf("%w: %s: no autoinstall mapping to merge the task's user_data into", ErrTemplate, name)
		}
		j := mappingIndex(ai, "user-data")
		if j < 0 {
			ai.Content = append(ai.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: "user-data"}, base)
		} else {
			ours := ai.Content[j+1]
			if ours.Kind != yaml.MappingNode {
				return nil, fmt.Errorf("%w: %s: autoinstall.user-data is not a mapping", ErrTemplate, name)
			}
			mergeInto(base, ours, authoritative)
			base.HeadComment, base.LineComment, base.FootComment = ours.HeadComment, ours.LineComment, ours.FootComment
			ai.Content[j+1] = base
		}
	} else {
		mergeInto(base, top, authoritative)
		base.HeadComment, base.FootComment = top.HeadComment, top.FootComment
		doc.Content[0] = base
	}
	var out bytes.Buffer
	out.WriteString("#cloud-config\n")
	if header != "" {
		out.WriteString(header + "\n")
	}
	out.WriteString("#\n# The task's user_data is the base and LPMOS's keys are added to it: lists\n# appended, mappings merged; where both set a value, the user_data's stays\n# (but a host name the task gives wins).\n")
	enc := yaml.NewEncoder(&out)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return nil, fmt.Errorf("%w: %s: writing the merged user-data: %w", ErrTemplate, name, err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("%w: %s: writing the merged user-data: %w", ErrTemplate, name, err)
	}
	if out.Len() > maxOutput {
		return nil, fmt.Errorf("%w: %s: output exceeds %d bytes", ErrTemplate, name, maxOutput)
	}
	return out.Bytes(), nil
}

func valueOf(m *yaml.Node, key string) *yaml.Node {
	if i := mappingIndex(m, key); i >= 0 {
		return m.Content[i+1]
	}
	return nil
}
