"""`avtime search`: the nearest clips of an `avtime embed` index to a query (docs/embed.md).

avtime search --index DST --query VIDEO|VIDEO_ID[/SEGMENT] [--from audio --to video]
    [--k 5] [--stride SECONDS] [--png OUT]
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
    parser.add_argument("--stride", default=None, metavar="SECONDS",
                        help="a query video file's clips start every SECONDS (default: cut as "
                             "the index was, by its --clips or --stride)")  # fmt: skip
    parser.add_argument("--png", default=None, help="also draw the query and its neighbours here")


def run(args: argparse.Namespace) -> int:
    """Search and print one line per neighbour: rank, cosine, source, segment/clip, time span."""
    from avtime.pipelines.errors import UsageError
    from avtime.training.cli.commands.embed import parse_stride
    from avtime.training.eval.search import SearchRequest, plot_search, result_lines, search

    if args.k < 1:
        raise UsageError("--k must be >= 1")
    req = SearchRequest(
        index=args.index, query=args.query, from_modality=args.from_modality,
        to_modality=args.to_modality or args.from_modality, k=args.k,
        stride_s=parse_stride(args.stride),
    )  # fmt: skip
    result = search(req)
    if args.png:
        plot_search(result, req, args.png)
    for line in result_lines(result, req):
        print(line)
    if args.png:
        print(f"search: picture -> {args.png}")
    return 0
