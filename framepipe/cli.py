"""Command line.

* ``framepipe extract SOURCE --out DEST [--models PACK] [--json]``: one video (or photo); a folder or an
  ``s3://`` prefix: every video under it, one after another in this process, with done markers (no Ray);
* ``framepipe people DEST``: the same person across every video of a destination (``people_index.parquet``);
* ``framepipe report DEST``: a static HTML contact sheet of a destination (``DEST/report/index.html``);
* ``framepipe compact DEST``: merge the manifest tables' small files (Delta's OPTIMIZE and VACUUM), dropping rows
  of earlier runs of videos processed again, and move a 0.2.x destination's per-video files into the tables;
* ``framepipe search PHOTO_OR_VIDEO DEST [--top K] [--face N] [--json]``: where the query's person appears;
* ``framepipe calibrate PHOTOS_DIR --models PACK``: measure a model pack on ``PHOTOS_DIR/<person>/*.jpg`` and write
  its thresholds (``PACK/calibration.json``, read by every front door).

Exit codes: 0 success, 1 the video (or one of the videos) failed or the destination cannot be read (one line on
stderr says why), 2 bad usage, 70 internal error (a bug of ours: bad input is never one).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from pydantic import ValidationError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 70


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="framepipe", description="Find the people in videos.")
    parser.add_argument("--debug", action="store_true", help="log details and show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("extract", help="process one video: talent frames, representative frames, manifest")
    ex.add_argument("source", help="local path, http(s) URL or s3://bucket/key; a folder or s3:// prefix: every video "
                    "under it")
    ex.add_argument("--out", required=True, help="local directory or s3://bucket/prefix")
    ex.add_argument("--models", help="InsightFace pack name or folder (env FRAMEPIPE_MODELS; default buffalo_l)")
    ex.add_argument("--json", action="store_true", help="print result.json to stdout")
    ex.add_argument("--sample-fps", type=float, help="frames analysed per second of video (default 1)")
    ex.add_argument("--sampling", choices=["exact", "keyframes"], help="exact frames or nearest keyframes")
    ex.add_argument("--backend", choices=["auto", "decord", "pyav"], help="decoder (default auto)")
    ex.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where the models run (default auto)")
    ex.add_argument("--det-size", type=int, help="detector input size (default 640)")
    ex.add_argument("--require-faces", action="store_true", default=None, help="fail when no person is found")
    ex.add_argument("--force", action="store_true", help="folder/prefix: redo inputs that are done already")
    ex.add_argument("--limit", type=int, help="folder/prefix: take at most this many inputs from the listing")
    ex.add_argument("--images", action="store_true", help="folder/prefix: photos too, as one-frame inputs")
    pe = sub.add_parser("people", help="link the same person across the videos of a destination")
    pe.add_argument("dest", help="local directory or s3://bucket/prefix written by extract, the backfill or Serve")
    pe.add_argument("--max-distance", type=float, help="cosine distance for one person (default: the model pack's "
                    "calibration)")
    pe.add_argument("--name", action="append", default=[], metavar="G=NAME", help="name global person G (repeatable)")
    pe.add_argument("--merge", nargs=2, type=int, action="append", default=[], metavar=("G1", "G2"),
                    help="G2 is the same person as G1 (G2 stays an alias; repeatable)")
    pe.add_argument("--split", action="append", default=[], metavar="VIDEO_ID:PERSON_ID",
                    help="give one person of one input a global person of its own (repeatable)")
    pe.add_argument("--model", help="the embedding model whose registry the corrections apply to")
    pe.add_argument("--check", action="store_true", help="list the destination's damaged files (exit 1 if any) and "
                    "change nothing")
    pe.add_argument("--no-report", action="store_true", help="do not refresh DEST/report")
    se = sub.add_parser("search", help="find a photo's (or a video's) person in every input of a destination")
    se.add_argument("query", help="photo or video: local path, http(s) URL or s3://bucket/key")
    se.add_argument("dest", help="local directory or s3://bucket/prefix written by extract, the backfill or Serve")
    se.add_argument("--top", type=int, default=10, help="results to show (default 10)")
    se.add_argument("--face", type=int, help="which face of the query, 0 = largest (default 0)")
    se.add_argument("--min-similarity", type=float, help="cosine similarity below which a person is not shown")
    se.add_argument("--models", help="InsightFace pack name or folder (must be the destination's; env "
                    "FRAMEPIPE_MODELS; default: the pack the destination names, looked up under the model root)")
    se.add_argument("--json", action="store_true", help="print the query's faces and the results as JSON")
    ca = sub.add_parser("calibrate", help="measure a model pack's same/different-person similarities on photos and "
                        "write its thresholds")
    ca.add_argument("photos", help="folder of <person>/<photo> (two or more photos of each person)")
    ca.add_argument("--models", help="InsightFace pack name or folder (env FRAMEPIPE_MODELS)")
    ca.add_argument("--out", help="where to write the calibration (default: calibration.json in the pack's folder)")
    ca.add_argument("--force", action="store_true", help="write it even from fewer pairs than the thresholds need")
    rp = sub.add_parser("report", help="write a static HTML contact sheet of a destination")
    rp.add_argument("dest", help="local directory or s3://bucket/prefix")
    co = sub.add_parser("compact", help="merge the manifest tables' small files; upgrade a 0.2.x destination")
    co.add_argument("dest", help="local directory or s3://bucket/prefix")
    for command in sub.choices.values():  # --debug before or after the command (set only where given)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="log details and show tracebacks")
    return parser


def _progress_bar(enabled: bool):
    from tqdm import tqdm

    bar = tqdm(total=0, unit="frame", desc="analysing", disable=not enabled, file=sys.stderr, leave=False)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, update


def _summary(result) -> str:
    v, p = result.video, result.processing
    lines = [
        f"{result.video_id}: {len(result.talent_frames)} people, {len(result.representative_frames)} "
        f"representative frames",
        f"  image: {v.width}x{v.height}, {v.codec}"
        if v.media_type == "image"
        else f"  video: {v.width}x{v.height}, {v.fps} fps, {v.total_frames} frames, {v.duration_s} s, {v.codec}",
        f"  took {p.duration_s:.1f} s on {p.device} ({p.frames_sampled} frames analysed, {p.faces_detected} faces, "
        f"{p.faces_embedded} embedded), "
        f"est. ${p.estimated_cost_usd:.5f}",
    ]
    for t in result.talent_frames:
        lines.append(
            f"  person {t.person_id}: best at {t.timestamp_s:.2f} s (quality {t.quality:.2f}), "
            f"seen {t.appearances}x from {t.first_seen_s:.1f} to {t.last_seen_s:.1f} s"
        )
    lines += [f"  note: {w}" for w in result.warnings]
    if result.talent_frames or result.representative_frames:
        lines.append(f"  outputs: {result.representative_frames[0].url.rsplit('/representative/', 1)[0]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.debug else logging.ERROR, format="%(levelname)s %(message)s")
    if not args.debug:
        warnings.filterwarnings("ignore")
    try:
        if args.command in ("people", "report", "compact"):
            return _destination_command(args)
        if args.command == "search":
            return _search(args)
        if args.command == "calibrate":
            return _calibrate(args)
        from framepipe import outputs, pipeline, sources
        from framepipe.config import Settings

        try:
            settings = Settings().with_overrides(
                models=args.models,
                sample_fps=args.sample_fps,
                sampling=args.sampling,
                backend=args.backend,
                device=args.device,
                det_size=args.det_size,
                require_faces=args.require_faces,
            )
        except ValidationError as e:
            first = e.errors()[0]
            print(f"framepipe: invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
            return EXIT_USAGE
        if not sources.is_single_input(args.source, images=args.images):
            return _extract_many(args, settings)
        bar, update = _progress_bar(sys.stderr.isatty())
        try:
            result = pipeline.extract(args.source, args.out, settings, progress=update)
        finally:
            bar.close()
        pipeline.mark_extracted(args.source, args.out, settings, result)
        if args.json:
            print(outputs.result_json(result))
        if result.status != "succeeded":
            print(f"framepipe: failed: {result.error}", file=sys.stderr)
            return EXIT_FAILED
        print(_summary(result), file=sys.stderr if args.json else sys.stdout)
        return EXIT_OK
    except KeyboardInterrupt:
        print("framepipe: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug of ours: one line unless --debug
        if args.debug:
            raise
        print(f"framepipe: internal error: {type(e).__name__}: {e} (rerun with --debug for details)", file=sys.stderr)
        return EXIT_INTERNAL


def _extract_many(args, settings) -> int:
    """Every video under a folder or prefix, in this process (models loaded once), with done markers."""
    import json

    from framepipe import pipeline
    from framepipe.analyzer import LocalAnalyzer
    from framepipe.errors import FramepipeError

    try:
        analyzer = LocalAnalyzer.load(settings)

        def one(result) -> None:
            what = (f"{len(result.talent_frames)} people" if result.status == "succeeded"
                    else f"failed: {result.error}")
            print(f"{result.video_id}: {what} ({result.processing.duration_s:.1f} s)", flush=True)

        summary = pipeline.process_many(args.source, args.out, settings, analyzer, force=args.force,
                                        limit=args.limit, images=args.images, on_result=one)
    except FramepipeError as e:
        print(f"framepipe: failed: {e.line}", file=sys.stderr)
        return EXIT_FAILED
    print("extract summary: " + json.dumps(summary.as_dict()), flush=True)
    if summary.skipped:
        print(f"  {summary.skipped} done already (same object, settings and framepipe version): skipped; "
              "--force redoes them", file=sys.stderr)
    return EXIT_FAILED if summary.failed else EXIT_OK


def _search(args) -> int:
    import json

    from framepipe import manifests
    from framepipe.people import search
    from framepipe.analyzer import LocalAnalyzer
    from framepipe.config import Settings
    from framepipe.errors import FramepipeError

    try:
        settings = Settings().with_overrides(models=args.models, search_min_similarity=args.min_similarity)
    except ValidationError as e:
        print(f"framepipe: invalid setting: {e.errors()[0]['msg']}", file=sys.stderr)
        return EXIT_USAGE
    if args.top < 1:
        print("framepipe: --top must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.models is None and "FRAMEPIPE_MODELS" not in os.environ:  # the pack the destination names
            packs = search.destination_packs(args.dest)
            if len(packs) == 1:
                settings = settings.with_overrides(models=packs[0])
        analyzer = LocalAnalyzer.load(settings)
        faces = search.query_faces(args.query, settings, analyzer)
        face = search.pick(faces, args.face)
        hits = search.find(args.dest, face.embedding, analyzer.pack, settings, args.top)
    except FramepipeError as e:
        print(f"framepipe: failed: {e.line}", file=sys.stderr)
        return EXIT_FAILED
    _say_damaged(manifests.destination(args.dest))
    floor = search.floor_for(settings, analyzer.pack, len(face.embedding))
    if args.json:
        doc = {"query": args.query, **search.answer(faces, args.face, floor, hits)}
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    print(f"{os.path.basename(args.query)}: {len(faces)} face(s); searching with face {args.face or 0} "
          f"(quality {face.quality:.2f}, {face.size_px:.0f} px); {len(hits)} result(s) at similarity >= "
          f"{floor}")
    for rank, h in enumerate(hits, 1):
        who = (f"person {h.global_person_id}" if h.global_person_id is not None else "a person not yet registered") \
            + (f" ({h.name})" if h.name else "")
        seen = f"seen {h.first_seen_s:.1f}-{h.last_seen_s:.1f} s" if h.seen_s else "a photo"
        print(f"{rank:>3}. {h.similarity:.3f}  {who}  {os.path.basename(h.source)} person {h.person_id}, {seen}")
        print(f"       {h.frame_url}")
    return EXIT_OK


def _calibrate(args) -> int:
    from pathlib import Path

    from framepipe import calibration
    from framepipe.analyzer import LocalAnalyzer
    from framepipe.config import Settings
    from framepipe.errors import FramepipeError
    from framepipe.faces import resolve_pack
    from framepipe.storage import Destination

    settings = Settings().with_overrides(models=args.models)
    if not os.path.isdir(args.photos):
        print(f"framepipe: no such directory: {args.photos}", file=sys.stderr)
        return EXIT_FAILED
    try:
        analyzer = LocalAnalyzer.load(settings)
        folder = resolve_pack(settings.models, settings.model_root)
        out = Path(args.out) if args.out else Path(os.path.join(folder[1], "models", folder[0])
                                                   if not os.path.isdir(folder[0]) else folder[0]) / calibration.FILE
        cal, missed = calibration.measure(args.photos, analyzer, analyzer.pack, force=args.force)
    except FramepipeError as e:
        print(f"framepipe: failed: {e.line}", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as e:
        print(f"framepipe: cannot calibrate on {args.photos}: {e}", file=sys.stderr)
        return EXIT_FAILED
    try:
        Destination(str(out.parent)).write(out.name, cal.to_json().encode())
    except FramepipeError as e:
        print(f"framepipe: {e.message} (--out FILE writes elsewhere)", file=sys.stderr)
        return EXIT_FAILED
    print(f"{cal.pack} ({cal.embedding_dim}-d) on {cal.photos} photos of {cal.identities} people "
          f"({cal.genuine_pairs} same-person, {cal.impostor_pairs} different-person pairs; {len(missed)} photos "
          f"without a face)")
    print(f"  same person: median similarity {cal.genuine_median}; different people: median {cal.impostor_median}")
    print(f"  one person from similarity {cal.match_similarity} (1 in {round(1 / calibration.FAR_STRICT)} pairs of "
          f"different people reach it; {cal.true_accept_at_match:.1%} of same-person pairs do): clustering, "
          f"registry and search thresholds")
    print(f"  one track from similarity {cal.link_similarity} (1 in {round(1 / calibration.FAR_LOOSE)})")
    print(f"wrote {out}")
    return EXIT_OK


LISTED = 20  # lines of each list `framepipe people` prints (the people index has them all)


def _more(count: int) -> None:
    if count > LISTED:
        print(f"  ... and {count - LISTED} more (manifests/people_index.parquet)")


def _say_damaged(d) -> None:
    """A warning line for each damaged file of the destination that this command did without."""
    from framepipe import commits, tables

    for rel in sorted(tables.DAMAGED | commits.DAMAGED):
        print(f"framepipe: warning: {d.url(rel)} is damaged: done without it (framepipe people DEST --check)",
              file=sys.stderr)


def _destination_command(args) -> int:
    from framepipe import manifests, report, schema, table_upkeep, tables
    from framepipe.people import grouping, registry
    from framepipe.config import Settings
    from framepipe.errors import FramepipeError

    try:
        d = manifests.destination(args.dest)
        if not d.is_s3 and not os.path.isdir(d.root):
            print(f"framepipe: no such directory: {args.dest}", file=sys.stderr)
            return EXIT_FAILED
        if args.command == "people" and args.check:
            bad = manifests.check(d)
            for rel in bad:
                print(f"damaged: {d.url(rel)}")
            print(f"{len(bad)} damaged file(s) in {d.url('')}" + (": readers skip a damaged manifest file and use the "
                  "registry's version before a damaged one; restore them from a copy or remove them" if bad else ""))
            return EXIT_FAILED if bad else EXIT_OK
        if args.command == "people":
            try:
                settings = Settings().with_overrides(people_max_distance=args.max_distance)
            except ValidationError as e:
                print(f"framepipe: invalid setting max-distance: {e.errors()[0]['msg']}", file=sys.stderr)
                return EXIT_USAGE
            try:
                corrections = registry.Corrections(
                    names={int(g): n for g, n in (item.split("=", 1) for item in args.name)},
                    merges=[(int(a), int(b)) for a, b in args.merge],
                    splits=[(v, int(p)) for v, p in (item.rsplit(":", 1) for item in args.split)],
                )
            except ValueError:
                print("framepipe: --name takes G=NAME and --split VIDEO_ID:PERSON_ID", file=sys.stderr)
                return EXIT_USAGE
            index, updates, _ = registry.update_destination(d, settings.people_max_distance, settings.people_max_count,
                                                         corrections, args.model, models=settings.models)
            summary = grouping.summary(index)
            multi = summary[summary["videos"] > 1]
            print(
                f"{len(index)} people in {index['video_id'].nunique() if len(index) else 0} inputs -> "
                f"{len(summary)} distinct people, {len(multi)} in more than one input; wrote {d.url(schema.PEOPLE_INDEX)}"
            )
            for model, u in updates.items():
                how = "seeded by clustering" if u.seeded else "updated"
                print(f"registry {model}: {how}: {u.created} new global people, {u.attached} attached to known ones, "
                      f"{u.merged} joined to another (their ids kept as aliases), "
                      f"{u.detached} detached (inputs processed again)")
            named = index.dropna(subset=["name"]).drop_duplicates("global_person_id")
            listed = multi.head(LISTED)
            sources = grouping.sources_of(index, listed["global_person_id"])
            for row in listed.itertuples():
                names = ", ".join(os.path.basename(s) for s in sources[int(row.global_person_id)][:LISTED])
                print(f"  person {row.global_person_id}: {row.videos} inputs ({names})")
            _more(len(multi))
            for row in named.head(LISTED).itertuples():
                print(f"  person {row.global_person_id} is {row.name}")
            _more(len(named))
            joins = grouping.within_video_joins(index)
            print(f"{len(joins)} within-input joins (two persons of one input found to be one person: a split)")
            for j in joins[:LISTED]:
                print(f"  {os.path.basename(j.source)}: persons {', '.join(map(str, j.person_ids))} -> "
                      f"person {j.global_person_id}")
            _more(len(joins))
            if not args.no_report:
                print(f"report: {report.write(d)}")
        elif args.command == "compact":
            for kind in tables.KINDS:
                moved = table_upkeep.upgrade(d, kind)
                dropped = table_upkeep.drop_superseded(d, kind)
                done = tables.optimize(d, kind)
                print(f"{kind}: {moved} per-video files moved into the table, {dropped} rows of earlier runs "
                      f"dropped, {done['files_removed']} files merged into {done['files_added']}, "
                      f"{done['vacuumed']} unused files removed")
        else:
            print(f"report: {report.write(d)}")
        _say_damaged(d)
        return EXIT_OK
    except FramepipeError as e:
        print(f"framepipe: failed: {e.line}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:  # the tables' own reads and writes (delta-rs, Arrow); the destination's are typed
        print(f"framepipe: cannot read or write {args.dest}: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
