#!/usr/bin/env bash
# Mutation testing of one module with cosmic-ray (docs/contributing.md, "Mutation testing").
#
#   tools/mutation.sh MODULE [TEST_FILES...]
#   tools/mutation.sh xbar_tfmot/core/cost.py tests/test_cost.py
#
# MODULE is a path (xbar_tfmot/core/cost.py) or a dotted name (xbar_tfmot.core.cost). Without
# TEST_FILES the table below, then tests/test_<name>.py, gives the test files that concern it.
# Each mutant is written into a scratch copy of the working tree (tracked and untracked files
# that git does not ignore), never into this checkout, and its test files run there in a fresh
# pytest process (TensorFlow is not fork-safe, so every mutant pays its import: a few seconds).
#
# Environment:
#   MUTATION_JOBS=N     run N mutants at once, each in its own copy of the tree (default 1)
#   MUTATION_MAX=N      test an evenly spaced sample of N mutants only (default: all)
#   MUTATION_TIMEOUT=S  seconds a mutant's tests may run (default: 3x the clean run, >= 60)
#   MUTATION_DIR=PATH   keep the scratch folder there (default: a new folder under /tmp)
#   MUTATION_RETEST=1   run only the survivors of the earlier run kept in MUTATION_DIR again,
#                       on the tree as it is now (after tests were added: the "after" count)
#   MUTATION_FROM=DIR   mutate a copy of DIR (a snapshot of the tree) instead of this checkout
#   MUTATION_PORT=P     first port of the MUTATION_JOBS workers (default 9876; one per job)
#   PYTEST_ARGS="..."   extra pytest arguments, e.g. "-k 'not pipeline'" to leave out slow tests
#
# Prints the counts (killed, survived, timed out, skipped) and writes every surviving mutant's
# diff to $MUTATION_DIR/survivors.txt. Exits 0 whatever survived; 2 when the clean run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
py="$repo/.venv/bin/python"
cr="$repo/.venv/bin/cosmic-ray"
[ -x "$cr" ] || { echo "cosmic-ray is not in .venv: .venv/bin/python -m pip install -e '.[test]'" >&2; exit 2; }
[ $# -ge 1 ] || { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

module=$1; shift
case "$module" in
  *.py) ;;
  *) module="${module//.//}.py" ;;
esac
[ -f "$module" ] || { echo "no such module: $module" >&2; exit 2; }

tests=("$@")
if [ ${#tests[@]} -eq 0 ]; then
  case "$module" in
    xbar_tfmot/core/analog.py) tests=(tests/test_analog_model.py) ;;
    xbar_tfmot/core/geometry.py) tests=(tests/test_geometry.py tests/test_core_formulations.py) ;;
    xbar_tfmot/core/projection.py) tests=(tests/test_projection.py tests/test_core_formulations.py) ;;
    xbar_tfmot/core/crossbar_matmul.py) tests=(tests/test_crossbar_matmul.py) ;;
    xbar_tfmot/app/workdir_lock.py) tests=(tests/test_workdir_lock.py) ;;
    xbar_tfmot/core/policy.py)  # and the Keras-free allocation maths of test_allocation.py
      a=tests/test_allocation.py
      tests=(tests/test_policy.py "$a::test_allocate_by_score_meets_the_total_with_one_crossbar_each"
             "$a::test_allocate_by_score_normalises_per_layer" "$a::test_unit_scores_are_what_the_projection_keeps"
             "$a::test_allocate_by_curves_is_the_exact_optimum" "$a::test_every_mode_plans_the_model_wide_budget_exactly"
             "$a::test_policy_config_round_trip_and_errors") ;;
    *) tests=("tests/test_$(basename "$module")") ;;
  esac
fi
for t in "${tests[@]}"; do
  [ -f "${t%%::*}" ] || { echo "no such test file: $t" >&2; exit 2; }
done

jobs=${MUTATION_JOBS:-1}
work=${MUTATION_DIR:-$(mktemp -d /tmp/mutation.XXXXXX)}
mkdir -p "$work"
echo "[mutation] $module with ${tests[*]}; scratch in $work"

copy_tree() {  # the working tree as git sees it (ignored files, .venv among them, left out)
  rm -rf "$1" && mkdir -p "$1"
  if [ -n "${MUTATION_FROM:-}" ]; then cp -a "$MUTATION_FROM/." "$1/"; return; fi
  git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && printf '%s\0' "$f"
  done | tar --null -T - -cf - | tar -xf - -C "$1"
}
for ((k = 0; k < jobs; k++)); do copy_tree "$work/tree$k"; done

test_command="$py -m pytest -x -q -p no:cacheprovider -p no:xdist ${PYTEST_ARGS:-} ${tests[*]}"
echo "[mutation] clean run: $test_command"
start=$(date +%s)
if ! (cd "$work/tree0" && env -u TF_USE_LEGACY_KERAS bash -c "$test_command" > "$work/baseline.txt" 2>&1); then
  tail -20 "$work/baseline.txt" >&2
  echo "[mutation] the tests fail without any mutant; fix them first ($work/baseline.txt)" >&2
  exit 2
fi
clean=$(( $(date +%s) - start ))
timeout=${MUTATION_TIMEOUT:-$(( clean * 3 > 60 ? clean * 3 : 60 ))}
echo "[mutation] clean run took ${clean}s; timeout per mutant ${timeout}s"

# Operators: the realistic slips (+/-, *//, boundary flips of comparisons, ==/!=, is/is not,
# and/or, not added, True/False, numbers +-1, break/continue, a loop never entered, a caught
# exception changed, a decorator removed); the exotic replacements (a + b -> a << b, a < b ->
# a is b, ...) and the variable inserters are filtered out: they are killed by any import or
# multiply the run time without telling anything new.
{
  echo "[cosmic-ray]"
  echo "module-path = \"$module\""
  echo "timeout = $timeout"
  echo "excluded-modules = []"
  echo "test-command = \"$test_command\""
  echo
  echo "[cosmic-ray.distributor]"
  if [ "$jobs" -gt 1 ]; then
    echo "name = \"http\""
    echo
    echo "[cosmic-ray.distributor.http]"
    printf 'worker-urls = ['
    for ((k = 0; k < jobs; k++)); do printf '"http://localhost:%d",' $((${MUTATION_PORT:-9876} + k)); done
    echo ']'
  else
    echo "name = \"local\""
  fi
  echo
  echo "[cosmic-ray.filters.operators-filter]"
  echo "exclude-operators = ["
  echo "  'core/ReplaceBinaryOperator_(?!(Add_Sub|Sub_Add|Mul_Div|Div_Mul|FloorDiv_Div|Mod_FloorDiv|Pow_Mul|BitAnd_BitOr|BitOr_BitAnd)\$)',"
  echo "  'core/ReplaceComparisonOperator_(?!(Eq_NotEq|NotEq_Eq|Lt_LtE|LtE_Lt|Gt_GtE|GtE_Gt|Is_IsNot|IsNot_Is)\$)',"
  echo "  'core/ReplaceUnaryOperator_(?!(USub_UAdd|Delete_Not)\$)',"
  echo "  'core/VariableInserter',"
  echo "  'core/VariableReplacer',"
  echo "]"
} > "$work/cosmic-ray.toml"

session="$work/session.sqlite"
cd "$work/tree0"
if [ -n "${MUTATION_RETEST:-}" ]; then  # the survivors of the run kept in MUTATION_DIR, again
  [ -f "$session" ] || { echo "MUTATION_RETEST: no $session from an earlier run" >&2; exit 2; }
  "$py" - "$session" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
n = db.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED' "
               "OR test_outcome = 'survived'").rowcount
db.commit()
print(f"[mutation] retesting the {n} survivors of the earlier run")
EOF
else
rm -f "$session"
"$cr" init "$work/cosmic-ray.toml" "$session"
"$repo/.venv/bin/cr-filter-operators" "$session" "$work/cosmic-ray.toml"
"$repo/.venv/bin/cr-filter-pragma" "$session"
"$py" - "$session" "${MUTATION_MAX:-0}" <<'EOF'
import sys
from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult
path, cap = sys.argv[1], int(sys.argv[2])
with use_db(path, WorkDB.Mode.open) as db:
  pending = sorted(db.pending_work_items, key=lambda item: item.job_id)
  for item in [i for i in pending if i.mutations[0].operator_name == "core/NumberReplacer"
               and i.mutations[0].occurrence % 2]:  # keep n + 1, leave out n - 1
    db.set_result(item.job_id, WorkResult(output="n - 1 left out",
                                          worker_outcome=WorkerOutcome.SKIPPED))
    pending.remove(item)
  pending.sort(key=lambda item: (str(item.mutations[0].module_path), item.mutations[0].start_pos,
                                 item.mutations[0].operator_name, item.mutations[0].occurrence))
  if cap and len(pending) > cap:
    keep = {pending[round(i * (len(pending) - 1) / max(cap - 1, 1))].job_id for i in range(cap)}
    for item in pending:
      if item.job_id not in keep:
        db.set_result(item.job_id, WorkResult(output="not sampled (MUTATION_MAX)",
                                              worker_outcome=WorkerOutcome.SKIPPED))
  print(f"[mutation] {len(pending)} mutants after the operator filter (numbers: n + 1 only)"
        + (f", {min(cap, len(pending))} sampled" if cap else ""))
EOF
fi

pids=()
cleanup() { for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
if [ "$jobs" -gt 1 ]; then
  for ((k = 0; k < jobs; k++)); do
    (cd "$work/tree$k" && exec "$cr" http-worker --port $((${MUTATION_PORT:-9876} + k))) > "$work/worker$k.log" 2>&1 &
    pids+=($!)
  done
  sleep 3
fi
start=$(date +%s)
"$cr" exec "$work/cosmic-ray.toml" "$session"
echo "[mutation] mutants ran in $(( $(date +%s) - start ))s"

"$py" - "$session" "$work/survivors.txt" "$module" <<'EOF'
import collections, sys
from cosmic_ray.work_db import WorkDB, use_db
path, out, module = sys.argv[1:]
counts, survivors = collections.Counter(), []
with use_db(path, WorkDB.Mode.open) as db:
  items = {item.job_id: item for item in db.work_items}
  for job_id, result in db.results:
    if result.worker_outcome == "skipped":
      counts["skipped"] += 1
    elif result.output == "timeout":
      counts["timed out (killed)"] += 1
    elif result.test_outcome is not None:
      counts[str(result.test_outcome.value)] += 1
    else:
      counts[f"worker {result.worker_outcome}"] += 1
    if result.test_outcome is not None and result.test_outcome.value == "survived":
      m = items[job_id].mutations[0]
      survivors.append(f"# {job_id} {m.operator_name} #{m.occurrence} line {m.start_pos[0]}\n"
                       f"{result.diff}\n")
tested = counts["killed"] + counts["timed out (killed)"] + counts["survived"]
with open(out, "w", encoding="utf-8") as f:
  f.write("".join(survivors))
print(f"[mutation] {module}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
if tested:
  print(f"[mutation] {module}: {counts['survived']} of {tested} tested mutants survived "
        f"(score {1 - counts['survived'] / tested:.0%}); diffs in {out}")
EOF
