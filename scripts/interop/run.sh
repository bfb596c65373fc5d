#!/usr/bin/env bash
# Exports every TRL layout and ConvoKit folders with agora, then checks them with the real
# libraries (datasets, TRL, ConvoKit) through check_exports.py. Runs by hand, not in CI:
# the first run creates a virtual environment of about 6.5 GB (torch comes with TRL).
#
#   bash scripts/interop/run.sh            # VENV=/path/to/venv to reuse another one
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
here="$root/scripts/interop"
venv=${VENV:-$root/.venv-interop}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --no-cache-dir -r "$here/requirements.txt"
fi

cargo build --release -p agora-cli --manifest-path "$root/Cargo.toml"
agora="$root/target/release/agora"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ws="$work/ws"

# Inputs: a generated CMV corpus (5 MB), the bundled ESConv sample, and the real
# Persona-Chat validation file when ../shared/data is beside the repository.
"$agora" bench cmv --size-mb 5 --write-input "$work/cmv.jsonlist"
"$agora" import cmv "$work/cmv.jsonlist" -w "$ws" >/dev/null
"$agora" import esconv "$root/examples/data/esconv_sample.json" -w "$ws" >/dev/null
personachat="$root/../shared/data/personachat/valid_both_original_no_cands.txt"
[ -f "$personachat" ] || personachat="$root/examples/data/personachat_sample.txt"
"$agora" import personachat "$personachat" -w "$ws" >/dev/null

build() { "$agora" build "$@" -w "$ws" >/dev/null; }
trl="$work/trl"
build sft --corpus cmv --out "$trl/cmv-sft-messages"
build sft --corpus cmv --out "$trl/cmv-sft-text" --standard
build sft --corpus cmv --out "$trl/cmv-sft-prompt-completion" --layout prompt-completion
build sft --corpus cmv --out "$trl/cmv-sft-prompt-completion-standard" --layout prompt-completion --standard
build dpo --corpus cmv --out "$trl/cmv-dpo" --negatives 2
build dpo --corpus cmv --out "$trl/cmv-dpo-standard" --standard
build kto --corpus cmv --out "$trl/cmv-kto"
build kto --corpus cmv --out "$trl/cmv-kto-standard" --standard
build sft --corpus esconv --out "$trl/esconv-sft"
build sft --corpus personachat --out "$trl/personachat-sft"

"$agora" export convokit --corpus cmv --out "$work/convokit-cmv" -w "$ws"
"$agora" export convokit --corpus personachat --out "$work/convokit-personachat" -w "$ws"

"$venv/bin/python" "$here/check_exports.py" --trl-dir "$trl" --convokit-dir "$work/convokit-cmv"
"$venv/bin/python" "$here/check_exports.py" --convokit-dir "$work/convokit-personachat"
