"""`avtime search`: the nearest clips of an `avtime embed` index to a query (docs/embed.md).

avtime search --index DST --query VIDEO|VIDEO_ID[/SEGMENT] [--from audio --to video]
    [--k 5] [--png OUT]
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `avtime search`."""
    parser.add_argument("--index", required=True, help="an `avtime embed` --out (local or s3://)")
    parser.add_argument("--query", required=True,
                        help="a video file (embedded with the index's checkpoint), or a video id, "
                             "VIDEO_ID/SEGMENT or source URI of the index")  # fmt: skip
    parser.add_argument("--from", dest="from_modality", choices=("video", "audio"),
                        default="video", help="modality of the query (default video)")  # fmt: skip
    parser.add_argument("--to", dest="to_modality", choices=("video", "audio"), default=None,
                        help="modality of the index clips searched (default: --from)")  # fmt: skip
    parser.add_argument("--k", type=int, default=5, help="neighbours to print (default 5)")
    parser.add_argument("--png", default=None, help="also draw the query and its neighbours here")


def run(args: argparse.Namespace) -> int:
    """Search and print one line per neighbour: rank, cosine, source, segment/clip, time span."""
    from avtime.training.eval.search import SearchRequest, plot_search, search

    req = SearchRequest(
        index=args.index, query=args.query, from_modality=args.from_modality,
        to_modality=args.to_modality or args.from_modality, k=args.k,
    )  # fmt: skip
    result = search(req)
    if args.png:
        plot_search(result, req, args.png)
    print(
        f"search: {len(result.query.feats)} {req.from_modality} clips of {result.query.what} -> "
        f"{req.to_modality}, top {len(result.hits)} of {result.searched} clips in {req.index}"
    )
    for h in result.hits:
        print(
            f"{h.rank:3d}  {h.score:+.4f}  {h.source}  segment {h.segment} clip {h.clip}  "
            f"{h.t_start:.2f}-{h.t_end:.2f} s"
        )
    if args.png:
        print(f"search: picture -> {args.png}")
    return 0
