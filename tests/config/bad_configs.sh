#!/usr/bin/env bash
# Invalid configs through the real CLI: each must give exit code 2, exactly one line on stderr
# naming the file (and the line where there is one), and no crash.
#   bad_configs.sh TGA_BINARY
set -uo pipefail
tga=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0 passed=0

# expect NAME FILE_CONTENT_PRINTF EXPECTED_SUBSTRING [extra tga args...]
expect() {
    local name=$1 content=$2 want=$3
    shift 3
    local file="$work/$name.yaml"
    printf -- "$content" >"$file"
    "$tga" plan --config "$file" "$@" >"$work/out" 2>"$work/err"
    local rc=$? lines
    lines=$(wc -l <"$work/err")
    if [ "$rc" -ne 2 ] || [ "$lines" -ne 1 ] || ! grep -qF -- "$want" "$work/err" || ! grep -qF "$name.yaml" "$work/err"; then
        echo "FAIL $name: exit $rc, $lines stderr lines, expected '$want' and the file name in:"
        cat "$work/err"
        failures=$((failures + 1))
    else
        echo "ok   $name: $(cat "$work/err")"
        passed=$((passed + 1))
    fi
}

expect unknown_key     'model:\n  dim: 64\n  dimm: 3\n'               ':3:'
expect unknown_section 'modle:\n  dim: 64\n'                          ':1:'
expect wrong_type      'model:\n  dim: sixty\n'                        ':2:'
expect float_for_int   'train:\n  steps: 1.5\n'                        ':2:'
expect out_of_range    'train:\n  lr: -1\n'                            ':2:'
expect bad_choice      'train:\n  trainable: stage3\n'                 'stage2'
expect malformed_yaml  'model:\n  dim: [1, 2\n'                        'malformed YAML'
expect not_yaml        '\x7fELF\x02\x01\x01\x00\x00\xff\xfe\x00'        'not a text file'
expect top_level_list  '- 1\n- 2\n'                                    ':1:'
expect duplicate_key   'model:\n  dim: 64\n  dim: 32\n'                ':3:'
expect bad_layers      'tga:\n  layers: "5-3"\n'                       ':2:'
expect layer_too_deep  'model:\n  n_layers: 4\ntga:\n  layers: "1-9"\n' 'tga.layers'

# --set errors name the assignment instead of a line
"$tga" plan --set model.dim=abc >"$work/out" 2>"$work/err"
rc=$?
if [ "$rc" -eq 2 ] && [ "$(wc -l <"$work/err")" -eq 1 ] && grep -qF "model.dim" "$work/err"; then
    echo "ok   set_bad_value: $(cat "$work/err")"; passed=$((passed + 1))
else
    echo "FAIL set_bad_value: exit $rc"; cat "$work/err"; failures=$((failures + 1))
fi
# a missing file names the file (exit 2: the fix is in the command line)
"$tga" plan --config "$work/does_not_exist.yaml" >"$work/out" 2>"$work/err"
rc=$?
if [ "$rc" -eq 2 ] && [ "$(wc -l <"$work/err")" -eq 1 ] && grep -qF "does_not_exist.yaml" "$work/err"; then
    echo "ok   missing_file (exit $rc): $(cat "$work/err")"; passed=$((passed + 1))
else
    echo "FAIL missing_file: exit $rc"; cat "$work/err"; failures=$((failures + 1))
fi
echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
