# Source me: sets up the project-local libtorch (pip torch==2.11.0 in .venv) and the build
# environment tch needs. Used by README's commands, scripts/test.sh and .ci/run.
#   source scripts/env.sh
_divrl_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$_divrl_root/scripts/setup-torch.sh" || return 1 2>/dev/null || exit 1
export LIBTORCH_USE_PYTORCH=1
export PATH="$_divrl_root/.venv/bin:$PATH"
# torch-sys reads the python on PATH; build.rs files embed its torch/lib as an rpath.
DIVRL_TORCH_LIB="$("$_divrl_root/.venv/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export DIVRL_TORCH_LIB
unset _divrl_root
