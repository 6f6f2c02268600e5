"""`python -m ptm_jax.interop convert --src PATH --dst DIR [--to ptm_jax|hf] [--architecture A]`.

--to ptm_jax (default): an HF directory or a .gguf file -> a ptm_jax checkpoint directory, usable
  as `--config.init_from=DIR` (and by `load_pretrained`, `python -m ptm_jax.generate`).
--to hf: an HF dir, .gguf, converted dir or training run -> config.json + model.safetensors.
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m ptm_jax.interop', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='command', required=True)
  conv = sub.add_parser('convert', help='convert a checkpoint')
  conv.add_argument('--src', required=True, help='HF dir, .gguf file, or ptm_jax run/converted dir')
  conv.add_argument('--dst', required=True, help='output directory')
  conv.add_argument('--to', choices=('ptm_jax', 'hf'), default='ptm_jax')
  conv.add_argument('--architecture', default=None,
                    help='HF class to write with --to hf (default: from the source / config)')
  sub.add_parser('list', help='print the supported HF architectures')
  args = parser.parse_args(argv)

  from ptm_jax import interop  # after argument parsing: --help stays fast
  if args.command == 'list':
    print('\n'.join(interop.supported_architectures()))
    return 0
  try:
    out = interop.convert(args.src, args.dst, to=args.to, architecture=args.architecture)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'wrote {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
