"""tools/offline_bundle.py: which packages a bundle carries for a target (no download here)."""
import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    'offline_bundle', os.path.join(REPO, 'tools', 'offline_bundle.py'))
bundle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bundle)


def test_the_lent_gpu_gets_the_data_stack_and_never_jax():
  have = bundle.read_have(os.path.join(REPO, 'tools', 'targets', 'lent_gpu.txt'))
  assert {'jax', 'flax', 'optax', 'orbax-checkpoint', 'numpy', 'sentencepiece'} <= have
  needed = {n for n in bundle.closure('ptm_jax', '3.12', have)
            if n not in have and n not in bundle.NEVER_PACKED}
  # What the image lacks and every run imports: config files, the tfds + grain data stack.
  assert {'ml-collections', 'grain', 'tensorflow-datasets', 'array-record'} <= needed
  # ... and what tfds needs beyond the image (found by following requirements, not listed here).
  assert {'tensorflow-metadata', 'dm-tree', 'promise', 'immutabledict'} <= needed
  assert not needed & (have | bundle.NEVER_PACKED)
  # A package the target has is not followed: huggingface-hub's own needs are the image's.
  assert 'httpx2' not in needed


def test_have_files_take_freeze_output_and_comments(tmp_path):
  path = tmp_path / 'have.txt'
  path.write_text('# comment\nJax==0.11.2\nml_collections>=1.0  # trailing\netils[epath]\n\n')
  assert bundle.read_have(str(path)) == {'jax', 'ml-collections', 'etils'}
