"""Benchmark tag selection: what choosing builders by tags costs a master at attach.

    .venv/bin/python bench/selection.py [--slaves 10000] [--builders 200] [--tags 8]

Builds a config of N slaves with random tags from a pool and M builders selecting by 1-3 tags
(a third also by name), then times `selection.builders_for` for every slave (what each attach
does once) and `selection.unserved` (what checkconfig does once). Prints numbers; asserts
nothing.
"""

from __future__ import annotations

import argparse
import random
import time

from bbx.master.config import BuilderConfig, MasterConfig, SlaveConfig
from bbx.master.selection import builders_for, unserved

POOL = [f"tag{i}" for i in range(24)]


class _Builder:
    def __init__(self, config):
        self.config = config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slaves", type=int, default=10_000)
    parser.add_argument("--builders", type=int, default=200)
    parser.add_argument("--tags", type=int, default=8, help="tags per slave")
    args = parser.parse_args()
    rng = random.Random(11)
    slaves = [SlaveConfig(f"s{i}", "pw", tags=tuple(rng.sample(POOL, args.tags)))
              for i in range(args.slaves)]
    builders = {}
    for i in range(args.builders):
        names = (f"s{rng.randrange(args.slaves)}",) if i % 3 == 0 else ()
        config = BuilderConfig(f"b{i}", names, f"b{i}", tags=tuple(rng.sample(POOL, rng.randint(1, 3))))
        builders[config.name] = _Builder(config)

    started = time.perf_counter()
    chosen = sum(len(builders_for(builders, s.name, s.tags)) for s in slaves)
    attach = time.perf_counter() - started
    print(f"builders_for: {args.slaves} slaves x {args.builders} builders in {attach:.3f} s "
          f"({attach / args.slaves * 1e6:.1f} us per attach; {chosen / args.slaves:.1f} builders "
          f"per slave)")

    config = MasterConfig(path=None, listen="tcp:0", keepalive_interval=30, keepalive_timeout=90,
                          log="x", slaves=tuple(slaves),
                          builders=tuple(b.config for b in builders.values()))
    started = time.perf_counter()
    warnings = unserved(config)
    print(f"unserved (checkconfig): {time.perf_counter() - started:.3f} s, "
          f"{len(warnings)} warning(s)")


if __name__ == "__main__":
    main()
