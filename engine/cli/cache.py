"""``headstart cache info|verify|repair|gc|search|index``: inspect and maintain the feature stores."""

from __future__ import annotations

import click

from ._common import CliState, echo_json, echo_table


def _settings(ctx: click.Context):
    return CliState.from_ctx(ctx).engine().settings


def _load(settings, fingerprint: str):
    """The store whose fingerprint is ``fingerprint`` or starts with it (unique prefix)."""
    from ..errors import StoreError
    from ..store.catalog import store_dirs
    from ..store.features import FeatureStore

    matches = [p for p in store_dirs(settings) if p.name == fingerprint] or \
        [p for p in store_dirs(settings) if p.name.startswith(fingerprint)]
    if len(matches) != 1:
        what = "no" if not matches else f"{len(matches)}"
        raise StoreError(f"{what} feature store(s) match fingerprint '{fingerprint}' under {settings.features_dir}",
                         hint="list the stores with `headstart cache info`")
    return FeatureStore.load(matches[0])


@click.group("cache")
def cache() -> None:
    """Inspect, verify, search and clean the feature stores."""


@cache.command("info")
@click.option("--errors", "show_errors", is_flag=True, help="Also list each store's per-item error records.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def info(ctx: click.Context, show_errors: bool, as_json: bool) -> None:
    """List each feature store with its backbone, fingerprint, vectors, errors and bytes."""
    from ..store.catalog import list_stores
    from ..store.features import FeatureStore

    settings = _settings(ctx)
    stores = list_stores(settings)
    if show_errors:
        for entry in stores:
            if "error" not in entry:
                entry["errors"] = [r.as_dict() for r in FeatureStore.load(entry["path"]).error_records()]
    if as_json:
        echo_json({"home": str(settings.home), "stores": stores})
        return
    if not stores:
        click.echo(f"no feature stores under {settings.features_dir}")
        return
    echo_table(["backbone", "fingerprint", "dim", "n_vectors", "n_errors", "bytes", "index"],
               [[s.get("backbone", "?"), s["fingerprint"][:16], s.get("dim"), s.get("n_vectors"),
                 s.get("n_errors"), s.get("bytes"), "DAMAGED: run `headstart cache verify`" if "error" in s
                 else s.get("index") or "-"] for s in stores])
    for entry in stores if show_errors else []:
        for record in entry.get("errors", []):
            click.echo(f"{entry['fingerprint'][:16]}  {record['key'][:16]}  {record['ref']}  "
                       f"[{record['stage']}] {record['reason']}")


@cache.command("verify")
@click.argument("fingerprint", required=False)
@click.option("--quick", is_flag=True,
              help="Check sizes, Arrow footers, rows, schema and a sample of each shard's vectors; skip hashing "
                   "files, checking every vector and probing the index.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def verify(ctx: click.Context, fingerprint: str | None, quick: bool, as_json: bool) -> None:
    """Check manifests, shards (size, sha256, rows, finite unit vectors) and indexes; exit 1 on damage.

    Reads check each shard the same way once per process, so damage is also caught where vectors are used.
    """
    from ..errors import StoreError
    from ..store.catalog import store_dirs
    from ..store.features import FeatureStore
    from ..store.manifest import read_manifest

    settings = _settings(ctx)
    reports = []
    paths = [_load(settings, fingerprint).path] if fingerprint else store_dirs(settings)
    for path in paths:
        try:
            if read_manifest(path) is None:
                continue
            reports.append(FeatureStore.load(path).verify(deep=not quick).as_dict())
        except (StoreError, OSError) as exc:
            reports.append({"path": str(path), "ok": False, "problems": [str(exc)], "notes": []})
    ok = all(r["ok"] for r in reports)
    if as_json:
        echo_json({"ok": ok, "stores": reports})
    else:
        for r in reports:
            click.echo(f"{'ok     ' if r['ok'] else 'DAMAGED'}  {r['path']}")
            for line in r["problems"]:
                click.echo(f"  problem: {line}")
            for line in r["notes"]:
                click.echo(f"  note: {line}")
        if not reports:
            click.echo(f"no feature stores under {settings.features_dir}")
    if not ok:
        raise StoreError(f"{sum(not r['ok'] for r in reports)} feature store(s) are damaged",
                         hint="`headstart cache repair` drops damaged shards (their items are embedded again by the "
                              "next `headstart embed`) and damaged indexes; `headstart cache index` rebuilds an index")


@cache.command("repair")
@click.argument("fingerprint", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def repair(ctx: click.Context, fingerprint: str | None, as_json: bool) -> None:
    """Drop damaged shards (and a damaged index) from one store, or every store, in one atomic commit.

    Every shard is hashed and checked afresh. The items of dropped shards are no longer cached: the next
    `headstart embed` of their source embeds them again. Nothing else is changed.
    """
    from ..errors import StoreError
    from ..store.catalog import store_dirs
    from ..store.features import FeatureStore
    from ..store.manifest import read_manifest

    settings = _settings(ctx)
    paths = [_load(settings, fingerprint).path] if fingerprint else store_dirs(settings)
    results = []
    for path in paths:
        try:
            if read_manifest(path) is None:
                continue
        except StoreError as exc:
            results.append({"path": str(path), "error": exc.message, "dropped": [], "items_to_reembed": 0})
            continue
        results.append(FeatureStore.load(path).repair())
    if as_json:
        echo_json({"stores": results})
    else:
        for r in results:
            if r.get("error"):
                click.echo(f"cannot repair {r['path']}: {r['error']}")
                continue
            if not r["dropped"] and not r["index"]:
                click.echo(f"intact   {r['path']}")
                continue
            click.echo(f"repaired {r['path']}: dropped {len(r['dropped'])} shard(s); "
                       f"{r['items_to_reembed']} item(s) will be embedded again by the next `headstart embed`")
            for d in r["dropped"]:
                click.echo(f"  dropped {d['file']} ({d['rows']} {d['kind']} rows): {d['reason']}")
            if r["index"]:
                click.echo(f"  {r['index']}")
        if not results:
            click.echo(f"no feature stores under {settings.features_dir}")
    if any(r.get("error") for r in results):
        raise StoreError("some feature store manifests cannot be read, so those stores cannot be repaired",
                         hint="a store without a readable manifest must be deleted and re-embedded")


@cache.command("gc")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def gc(ctx: click.Context, as_json: bool) -> None:
    """Remove temp files, orphan shards and directories without a manifest (locked stores are skipped)."""
    from ..store.catalog import gc as collect

    from ..errors import StoreError

    result = collect(_settings(ctx))
    if as_json:
        echo_json(result)
    else:
        click.echo(f"removed {result['removed_files']} file(s) and {len(result['removed_dirs'])} directory(ies), "
                   f"freed {result['bytes_freed']} bytes")
        for path in result["skipped_locked"]:
            click.echo(f"skipped (a writer holds its lock): {path}")
    if result.get("errors"):
        raise StoreError(f"{len(result['errors'])} feature store(s) could not be collected: {result['errors'][0]}",
                         hint="a read-only store cannot be collected: remount it read-write; a damaged manifest "
                              "needs the store deleted and re-embedded")


@cache.command("search")
@click.argument("fingerprint")
@click.option("--key", "keys", multiple=True, required=True, help="Content key of a stored item (repeatable).")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1), help="Neighbours per key.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def search(ctx: click.Context, fingerprint: str, keys: tuple[str, ...], k: int, as_json: bool) -> None:
    """Nearest stored items (inner product) to stored item(s) KEY, from the store of FINGERPRINT."""
    store = _load(_settings(ctx), fingerprint)
    scores, found = store.search_keys(list(keys), k)
    listed = sorted({key for row in found for key in row if key is not None})
    refs = dict(zip(listed, store.refs(listed)))
    results = [{"key": key, "neighbours": [{"key": n, "score": float(s), "ref": refs.get(n)}
                                            for n, s in zip(found[i], scores[i]) if n is not None]}
               for i, key in enumerate(keys)]
    how = store.last_search
    if as_json:
        echo_json({"fingerprint": store.fingerprint, "search": how, "results": results})
        return
    if how.get("note"):
        click.echo(f"note: {how['note']}", err=True)
    for result in results:
        click.echo(f"neighbours of {result['key']}:")
        echo_table(["rank", "score", "key", "ref"],
                   [[i + 1, f"{n['score']:.4f}", n["key"], n["ref"]] for i, n in enumerate(result["neighbours"])])



@cache.command("index")
@click.argument("fingerprint", required=False)
@click.option("--kind", type=click.Choice(["auto", "flat", "ivf"]), default="auto", show_default=True,
              help="flat: exact inner product; ivf: on-disk IVF for stores larger than RAM; auto: by size.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def index(ctx: click.Context, fingerprint: str | None, kind: str, as_json: bool) -> None:
    """(Re)build the FAISS index of one store, or of every store, from its shards.

    `headstart embed` writes shards only and leaves the index to its first use, so that a long job's
    memory does not grow with the store: a search scans the rows the index lacks exactly, and builds
    the index first when it lacks 50,000 rows or more (or when its file does not match the manifest).
    `cache verify` reports a partial index as a note, not a problem. Run this to build it ahead of time.
    """
    from ..store.catalog import store_dirs
    from ..store.features import FeatureStore
    from ..store.index import IndexConfig
    from ..store.manifest import read_manifest

    settings = _settings(ctx)
    paths = [_load(settings, fingerprint).path] if fingerprint else [p for p in store_dirs(settings)
                                                                     if read_manifest(p) is not None]
    built = []
    for path in paths:
        store = FeatureStore.load(path)
        config = IndexConfig(**{**store.index_config.as_dict(), "kind": kind})
        entry = store.rebuild_index(config)
        built.append({"path": str(path), "fingerprint": store.fingerprint, "type": entry.get("type"),
                      "n_vectors": entry.get("n_vectors", 0)})
    if as_json:
        echo_json({"indexes": built})
        return
    for b in built:
        click.echo(f"{b['type'] or '-':5}  {b['n_vectors']:>10}  {b['path']}")
