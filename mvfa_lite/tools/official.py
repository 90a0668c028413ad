"""The MVFA authors' released adapters on the command line: ``import-official`` (convert an
official .pth once into an mvfa-lite checkpoint), ``fetch-official`` (download the two
archives from Google Drive with gdown), and the options ``evaluate``/``predict`` take to read
an official .pth directly (see mvfa_lite.protocols.official_checkpoint)."""
from __future__ import annotations

import os
import socket
import zipfile
from pathlib import Path

from ..data import catalogue
from ..errors import MVFAError

# the official README, "Pretrained model": one Drive file per archive
ARCHIVES = {"few-shot": "1bV1yzPxJarTRfd8liMIwyHcGywTTEL2k",
            "zero-shot": "1nGhcK32CrkgTR5Rav6rNfptUHaASfRnU"}
# the official dataset keys (--obj of the official scripts): one <key>.pth per archive
OFFICIAL_DATASETS = ("Brain", "Liver", "Retina_RESC", "Retina_OCT2017", "Chest",
                     "Histopathology")
DRIVE_HOST = "drive.google.com"
TIMEOUT_S = float(os.environ.get("MVFA_FETCH_TIMEOUT", "5"))


def drive_link(file_id: str) -> str:
    return f"https://drive.google.com/file/d/{file_id}/view"


def add_official_options(parser) -> None:
    """evaluate/predict: how to read an official MVFA .pth given as the checkpoint."""
    group = parser.add_argument_group(
        "official MVFA .pth files (read directly; ignored for mvfa-lite checkpoints)")
    group.add_argument("--setting", choices=["few-shot", "zero-shot"],
                       help="default: few-shot with --seed-file, else zero-shot (no memory bank)")
    group.add_argument("--seed-file", help="few-shot: the official dataset/fewshot_seed/<Obj>/"
                       "<k>-shot.txt naming the shots")
    group.add_argument("--shots", type=int, default=4, help="k of the seed file (default 4)")
    group.add_argument("--support-data", help="few-shot: the dataset folder holding the shots "
                       "(its valid split; evaluate: default the evaluated set)")
    group.add_argument("--model", dest="official_model", default="ViT-L-14-336",
                       help="the backbone the official file was trained on (default "
                       "ViT-L-14-336, the paper's; tiny-random for tests)")


def official_options(args) -> dict:
    options = dict(setting=args.setting, seed_file=args.seed_file, shots=args.shots,
                   model_name=args.official_model)
    if args.support_data:
        options["data"] = catalogue.path(args.support_data)
    return options


# --- import-official ---------------------------------------------------------------------
def add_import_official(commands) -> None:
    parser = commands.add_parser(
        "import-official", help="convert an official MVFA .pth into an mvfa-lite checkpoint",
        description="Convert the authors' adapters (train_few.py/train_zero.py output: "
        "seg_adapters + det_adapters) once into an mvfa-lite checkpoint that records the "
        "backbone (ViT-L-14-336 at 240 px, openai weights expected), the paper protocol, the "
        "few-shot memory bank's shots (from the official seed file) and the file's SHA-256.")
    parser.add_argument("file", help="the official .pth")
    parser.add_argument("--setting", choices=["few-shot", "zero-shot"], required=True)
    parser.add_argument("--dataset", required=True, help="the dataset folder (BMAD layout, "
                        "e.g. data/Brain_AD), an official key (Brain: data/Brain_AD) or a "
                        "shipped set's name; few-shot: the shots come from its valid split")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--seed-file", help="few-shot: dataset/fewshot_seed/<Obj>/<k>-shot.txt "
                        "of the official checkout")
    parser.add_argument("--model", dest="official_model", default="ViT-L-14-336",
                        help="the backbone it was trained on (default ViT-L-14-336)")
    parser.add_argument("--out", default="adapters.pth")
    parser.set_defaults(handler=_import_official)


def _import_official(args) -> int:
    from ..protocols.official_checkpoint import import_official
    dataset = args.dataset
    if dataset in OFFICIAL_DATASETS and not Path(dataset).exists():   # an official key
        dataset = f"data/{dataset}_AD"
    out = import_official(args.file, args.out, setting=args.setting,
                          data=catalogue.path(dataset), shots=args.shots,
                          seed_file=args.seed_file, model_name=args.official_model,
                          support_split=catalogue.splits(args.dataset)[0])
    print(f"{args.file} ({args.setting}, {args.official_model}) written as the mvfa-lite "
          f"checkpoint {out}; evaluate it with `mvfa-lite evaluate {out} {args.dataset}`")
    return 0


# --- fetch-official ----------------------------------------------------------------------
def add_fetch_official(commands) -> None:
    parser = commands.add_parser(
        "fetch-official", help="download the authors' trained adapters (Google Drive)",
        description="Download and unzip the MVFA authors' few-shot and zero-shot archives "
        "with gdown (pip install 'mvfa-lite[official]'), then check that every dataset's .pth "
        "is there. Needs internet; Drive may refuse when its quota is exceeded.")
    parser.add_argument("--to", required=True, help="folder for few-shot/ and zero-shot/")
    parser.add_argument("--only", choices=sorted(ARCHIVES), help="one archive only")
    parser.set_defaults(handler=_fetch_official)


def manual_step(to: Path) -> str:
    links = ", ".join(f"{name}: {drive_link(file_id)}" for name, file_id in ARCHIVES.items())
    return (f"download the archives by hand ({links}), unzip them into {to} (giving "
            f"{to}/few-shot/<Obj>.pth and {to}/zero-shot/<Obj>.pth) and run `mvfa-lite "
            f"fetch-official --to {to}` again to check them.")


def check_network(to: Path, host: str = DRIVE_HOST, timeout: float = TIMEOUT_S) -> None:
    """Fail at once, in one line, when Drive cannot be reached."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as error:
        raise MVFAError(f"cannot reach {host} ({error.strerror or error}); no network. Then "
                        f"{manual_step(to)}") from None


def found_files(to: Path, name: str) -> dict:
    """<key> -> the .pth of that dataset found under to/ (any depth) for archive ``name``."""
    found = {}
    folder = to / name
    for path in sorted(folder.rglob("*.pth")) if folder.is_dir() else []:
        if path.stem in OFFICIAL_DATASETS:
            found.setdefault(path.stem, path)
    return found


def _fetch_official(args) -> int:
    to = Path(args.to).expanduser().resolve()
    names = [args.only] if args.only else list(ARCHIVES)
    todo = [name for name in names if len(found_files(to, name)) < len(OFFICIAL_DATASETS)]
    if todo:
        check_network(to)
        try:
            import gdown
        except ImportError:
            raise MVFAError("fetch-official needs gdown: pip install 'mvfa-lite[official]' "
                            f"(or pip install gdown). Or {manual_step(to)}") from None
        to.mkdir(parents=True, exist_ok=True)
        for name in todo:
            archive = to / f"{name}.zip"
            try:
                got = gdown.download(id=ARCHIVES[name], output=str(archive), quiet=False)
            except Exception as error:          # quota pages, network, permission
                got, reason = None, str(error).strip().splitlines()[0] if str(error) else \
                    type(error).__name__
            else:
                reason = "gdown returned nothing"
            if not got or not zipfile.is_zipfile(archive):
                raise MVFAError(f"Google Drive refused the {name} archive ({reason}; Drive's "
                                f"download quota may be exceeded: try later). Or "
                                f"{manual_step(to)}")
            with zipfile.ZipFile(archive) as handle:     # always into to/<name>/
                inside = all(m.startswith(f"{name}/") for m in handle.namelist())
                handle.extractall(to if inside else to / name)
    missing = {name: [key for key in OFFICIAL_DATASETS if key not in found_files(to, name)]
               for name in names}
    if any(missing.values()):
        listed = "; ".join(f"{name}: {', '.join(keys)}" for name, keys in missing.items() if keys)
        raise MVFAError(f"{to} lacks the expected .pth files ({listed}). Or {manual_step(to)}")
    for name in names:
        print(f"{name}: " + ", ".join(f"{key} {path.relative_to(to)}"
                                      for key, path in sorted(found_files(to, name).items())))
    print(f"evaluate one with: mvfa-lite evaluate {to}/few-shot/Brain.pth data/Brain_AD "
          "--seed-file MVFA-AD/dataset/fewshot_seed/Brain/4-shot.txt --shots 4")
    return 0
