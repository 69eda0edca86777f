"""``featx cache``: the stores in a cache folder as a table, one store in words, checks
and removal."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..core.errors import FeatxError


def table(rows: list[tuple[str, ...]]) -> str:
    """Rows as left-aligned columns, the first row their headers; the last column is not padded."""
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1] for r in rows)


def _where(spec: str) -> str:
    """A source spec with its path relative to here when it lies below."""
    kind, _, rest = spec.partition(":")
    try:
        rest = os.path.relpath(rest) if rest.startswith(os.getcwd() + os.sep) else rest
    except ValueError:
        pass
    return f"{kind}:{rest}" if kind else spec


def _ls(cache) -> int:
    from .. import store

    rows = [("store", "source", "backbone", "px", "precision", "rows", "size", "created")]
    for path in store.list_stores(cache):
        try:
            i = store.info(path)
        except FeatxError as exc:
            rows.append((path.name, "-", "-", "-", "-", "-", "-", f"unreadable: {exc}"))
            continue
        prov = i["provenance"]
        bb = prov.get("backbone", {})
        rows.append((path.name, _where(prov.get("source", "")), bb.get("name", "-"),
                     str(bb.get("preprocessing", {}).get("image_size", "-")), prov.get("precision", "-"),
                     f"{i['rows']:,}", f"{i['bytes'] / 1e6:.1f} MB", prov.get("created", "-")))
    print(table(rows) if len(rows) > 1 else f"no stores in {cache}")
    return 0


def describe(i: dict) -> list[tuple[str, str]]:
    """A store's :func:`featx.store.info` as (what, value) lines."""
    prov, bb = i["provenance"], i["provenance"].get("backbone", {})
    pre = bb.get("preprocessing", {})
    made = prov.get("throughput", {})
    speed = f" ({made['images'] / made['seconds']:.1f} images/s)" if made.get("seconds") else ""
    lines = [
        ("store", i["path"]),
        ("source", prov.get("source", "-")),
        ("backbone",
         f"{bb.get('name', '-')} ({bb.get('architecture', '-')}), weights {bb.get('weights', '-')}, "
                     f"SHA-256 {bb.get('weights_sha256', '')[:16] or '-'}"),
        ("preprocessing",
         f"{pre.get('image_size')} px, resize {pre.get('resize_size')} {pre.get('interpolation')}, "
                          f"mean {pre.get('mean')}, std {pre.get('std')}, decode {pre.get('decode')}"),
        ("precision",
         f"{prov.get('precision')} on {prov.get('device')}, runtime {prov.get('runtime', 'eager')}"),
        ("rows",
         f"{i['rows']:,} images in {len(i['classes'])} classes ({', '.join(i['classes']) or 'unlabelled'})"),
        ("features", ", ".join(f"{name} {shape[1]}" for name, shape in i["features"].items())),
        ("embedded", f"{made.get('images', 0):,} images in {made.get('seconds', 0.0):.1f} s{speed}"),
        ("created", f"{prov.get('created')} by featx {prov.get('featx')}, torch {prov.get('torch')}, "
                    f"timm {prov.get('timm')}, torchvision {prov.get('torchvision')}"),
        ("size", f"{i['bytes'] / 1e6:.1f} MB"),
        ("skipped", f"{len(i['skipped'])} files" if i["skipped"] else "none"),
    ]
    return lines + [("", f"{s['key']}: {s['reason']}") for s in i["skipped"]]


def cmd_cache(args) -> int:
    from .. import store

    if args.action == "ls":
        return _ls(args.cache)
    if args.action == "info":
        i = store.info(store.resolve(args.cache, args.stores[0]))
        width = max(len(k) for k, _ in describe(i))
        text = "\n".join(f"{k:<{width}}  {v}" for k, v in describe(i))
        print(json.dumps(i, indent=2) if args.json else text)
        return 0
    if args.action == "verify":
        paths = [store.resolve(args.cache, s) for s in args.stores] or store.list_stores(args.cache)
        bad = 0
        for path in paths:
            problems = store.verify(path)
            bad += bool(problems)
            print(f"{'ok' if not problems else 'DAMAGED'}  {path}" + "".join(f"\n    {p}" for p in problems))
        return 1 if bad else 0
    if args.action == "rm":
        if not args.stores and not args.all:
            raise FeatxError("cache rm: name the stores to delete, or pass --all")
        if args.all:
            paths = store.list_stores(args.cache)
        else:
            paths = [store.resolve(args.cache, s) for s in args.stores]
        for path in paths:
            store.remove(path)
            print(f"removed {Path(path)}")
        return 0
    if args.action == "export":
        from ..store.export import export

        for written in export(store.resolve(args.cache, args.stores[0]), args.out, args.format, args.layer):
            print(written)
        return 0
    if args.action == "compact":
        from ..store.compact import compact

        path = store.resolve(args.cache, args.stores[0])
        if store.info(path).get("shards") is None:
            raise FeatxError(f"{path}: a single-file store of an earlier featx; "
                             "the next extraction converts it")
        done = compact(path, args.dead_fraction)
        print(f"{path}: {done['rewritten']} shards rewritten as {done['written']}, "
              f"{done['freed_entries']} dead entries freed")
        return 0
    raise AssertionError(args.action)
