"""`kdstudio teacher add|list|remove`."""

from __future__ import annotations

import argparse

from kdstudio.cli import finite_float
from kdstudio.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "teacher", help="manage teachers (OpenAI-compatible endpoints, local models)"
    )
    tsub = p.add_subparsers(dest="teacher_command", metavar="ACTION")

    from kdstudio.teachers.servers import PRESETS

    add = tsub.add_parser(
        "add",
        help="add an OpenAI-compatible teacher",
        description="Add a teacher at an OpenAI-compatible endpoint. --preset fills the base "
        "URL of a known server on this machine ("
        + ", ".join(f"{p.key}: {p.title}" for p in PRESETS)
        + "); --base-url gives (or overrides) it.",
    )
    add.add_argument("name")
    add.add_argument("--base-url", metavar="URL", help="e.g. https://api.openai.com/v1")
    add.add_argument(
        "--preset",
        choices=[p.key for p in PRESETS],
        help="a known server: fills --base-url with its default address",
    )
    add.add_argument(
        "--model", help="the model at the endpoint (left out: the models it serves are listed)"
    )
    key = add.add_mutually_exclusive_group()
    key.add_argument(
        "--api-key-stdin",
        action="store_true",
        help="read the API key from stdin into the OS keyring",
    )
    key.add_argument(
        "--api-key-env",
        metavar="VAR",
        help="read the API key from this environment variable at run time",
    )
    add.add_argument(
        "--price-in", type=float, default=0.0, metavar="USD", help="USD per million input tokens"
    )
    add.add_argument(
        "--price-out", type=float, default=0.0, metavar="USD", help="USD per million output tokens"
    )
    add.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="K=V",
        help="extra HTTP header (repeatable); one that carries a credential goes with "
        "--secret-header instead",
    )
    add.add_argument(
        "--secret-header",
        action="append",
        default=[],
        metavar="NAME",
        help="extra HTTP header whose value is a credential (e.g. api-key): its value is read "
        "from stdin (one line each, after the API key's) into the OS keyring (repeatable)",
    )
    add.add_argument("--replace", action="store_true", help="replace a teacher of the same name")
    add.set_defaults(func=cmd_add)

    pre = tsub.add_parser(
        "presets", help="the known servers: default base URL and what each gives a teacher"
    )
    pre.add_argument("--json", action="store_true", help="print one JSON document")
    pre.set_defaults(func=cmd_presets)

    ls = tsub.add_parser("list", help="list teachers")
    ls.add_argument("--json", action="store_true", help="print one JSON document")
    ls.set_defaults(func=cmd_list)

    rm = tsub.add_parser("remove", help="remove a teacher and its stored key")
    rm.add_argument("name")
    rm.set_defaults(func=cmd_remove)

    local = tsub.add_parser("add-local", help="add a local Hugging Face model folder as a teacher")
    local.add_argument("name")
    local.add_argument(
        "--path",
        required=True,
        metavar="DIR",
        help="the model folder (config.json, weights, tokenizer)",
    )
    local.add_argument("--replace", action="store_true", help="replace a teacher of the same name")
    local.set_defaults(func=cmd_add_local)

    pr = tsub.add_parser(
        "probe", help="check a teacher: reachable, key, model, logprobs, token ids, latency"
    )
    pr.add_argument("name")
    pr.add_argument(
        "--timeout", type=finite_float, default=30.0, metavar="S", help="seconds per request"
    )
    pr.add_argument("--json", action="store_true", help="print one JSON document")
    pr.set_defaults(func=cmd_probe)


def _headers(items: list[str]) -> dict[str, str]:
    from kdstudio.config import credential_header

    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--header {item!r}: expected NAME=VALUE")
        k, v = item.split("=", 1)
        if not k.strip():
            raise UserError(f"--header {item!r}: the header name is empty")
        if credential_header(k.strip()):
            # the value is not repeated: it is on this command line already
            raise UserError(
                f"--header {k.strip()}=...: this header carries a credential, which must not "
                "be given as an argument (other users can read it, and it stays in your shell "
                f"history): use --secret-header {k.strip()} and give its value on standard "
                "input (it is kept in the OS keyring)"
            )
        out[k.strip()] = v.strip()
    return out


def _base_url_and_model(args: argparse.Namespace) -> tuple[str, str]:
    """--base-url (or the preset's), and --model (or an error listing the served models)."""
    from kdstudio.teachers.servers import list_models, preset

    chosen = preset(args.preset) if args.preset else None
    base_url = args.base_url or (chosen.base_url if chosen else None)
    if not base_url:
        raise UserError("give --base-url or --preset (kdstudio teacher presets lists them)")
    if args.model:
        return base_url, args.model
    from kdstudio.formatting import url

    try:
        served = list_models(base_url, timeout=5.0)
    except UserError as exc:
        raise UserError(f"--model is required (the models could not be listed: {exc})") from None
    shown = ", ".join(served[:20]) + (" ..." if len(served) > 20 else "")
    raise UserError(
        f"--model is required; {url(base_url)} serves: {shown}"
        if served
        else f"--model is required ({url(base_url)} lists no models)"
    )


def cmd_presets(args: argparse.Namespace, ctx) -> int:
    from kdstudio.teachers.servers import PRESETS

    if args.json:
        ctx.print_json([p.to_dict() for p in PRESETS])
        return 0
    rows = [[p.key, p.title, p.base_url, p.sparse, p.note] for p in PRESETS]
    ctx.print_table(["PRESET", "SERVER", "BASE URL", "TOP-K LOGPROBS", "NOTE"], rows)
    return 0


def cmd_add(args: argparse.Namespace, ctx) -> int:
    from kdstudio import secrets
    from kdstudio.cli import read_secret_from_stdin
    from kdstudio.config import TeacherConfig
    from kdstudio.formatting import url

    key_source = "keyring" if args.api_key_stdin else "env" if args.api_key_env else "none"
    base_url, model = _base_url_and_model(args)
    headers = _headers(args.header)
    secret_headers = list(dict.fromkeys(h.strip() for h in args.secret_header))
    teacher = TeacherConfig(
        name=args.name,
        kind="openai",
        base_url=base_url,
        model=model,
        key_source=key_source,
        key_env=args.api_key_env,
        headers={k: v for k, v in headers.items() if k not in secret_headers},
        secret_headers=secret_headers,
        price_in=args.price_in,
        price_out=args.price_out,
    )
    ws = ctx.ws
    exists = args.name in ws.teacher_names()
    if exists and not args.replace:
        raise UserError(
            f"a teacher named {args.name!r} already exists (use --replace to change it)"
        )
    # Every secret is read first and stored before the teacher: if the keyring fails,
    # nothing is added.
    key = read_secret_from_stdin("API key", "--api-key-stdin") if args.api_key_stdin else None
    values = {h: read_secret_from_stdin(f"value of header {h}", f"--secret-header {h}")
              for h in secret_headers}  # fmt: skip
    if key is not None:
        secrets.store_key(ws.id, args.name, key)
    for header, value in values.items():
        secrets.store_header(ws.id, args.name, header, value)
    dropped = []
    if exists:
        old = {h.lower() for h in ws.get_teacher(args.name).secret_headers}
        dropped = sorted(old - {h.lower() for h in secret_headers})
    ws.add_teacher(teacher, replace=args.replace)
    secrets.delete_headers(ws.id, args.name, dropped)  # this workspace's, no longer sent
    where = {
        "keyring": "key in the OS keyring",
        "env": f"key from ${args.api_key_env}",
        "none": "no key",
    }
    extra = f"; {len(secret_headers)} secret header(s) in the OS keyring" if secret_headers else ""
    print(
        f"added teacher {args.name!r}: {teacher.model} at {url(teacher.base_url)} "
        f"({where[key_source]}{extra})"
    )
    return 0


def cmd_list(args: argparse.Namespace, ctx) -> int:
    from kdstudio.formatting import url

    teachers = ctx.ws.list_teachers()
    if args.json:
        ctx.print_json([t.public_dict() for t in teachers])
        return 0
    if not teachers:
        print(
            "no teachers yet: add one with `kdstudio teacher add NAME --base-url URL --model MODEL`"
        )
        return 0
    rows = []
    for t in teachers:
        where = url(t.base_url) if t.kind == "openai" else t.path
        key = {"keyring": "keyring", "env": f"${t.key_env}", "none": "-"}[t.key_source]
        price = f"{t.price_in:g}/{t.price_out:g}" if (t.price_in or t.price_out) else "-"
        rows.append([t.name, t.kind, t.model or "", where, key, price])
    ctx.print_table(["NAME", "KIND", "MODEL", "WHERE", "KEY", "USD/M IN/OUT"], rows)
    return 0


def cmd_remove(args: argparse.Namespace, ctx) -> int:
    from kdstudio import secrets

    teacher = ctx.ws.get_teacher(args.name)
    if teacher.key_source == "keyring":
        secrets.delete_key(ctx.ws.id, args.name)  # this workspace's key only
    secrets.delete_headers(ctx.ws.id, args.name, teacher.secret_headers)
    ctx.ws.remove_teacher(args.name)
    print(f"removed teacher {args.name!r}")
    return 0


def cmd_add_local(args: argparse.Namespace, ctx) -> int:
    from kdstudio.config import TeacherConfig
    from kdstudio.model_folder import check_model_folder

    path = check_model_folder(args.path, "--path").resolve()
    teacher = TeacherConfig(name=args.name, kind="local", path=str(path), model=path.name)
    ws = ctx.ws
    if not args.replace and args.name in ws.teacher_names():
        raise UserError(
            f"a teacher named {args.name!r} already exists (use --replace to change it)"
        )
    ws.add_teacher(teacher, replace=args.replace)
    print(f"added local teacher {args.name!r}: {path}")
    return 0


def cmd_probe(args: argparse.Namespace, ctx) -> int:
    from kdstudio import secrets
    from kdstudio.teachers.probe import probe, summary_lines

    ws = ctx.ws
    teacher = ws.get_teacher(args.name)
    key, headers = None, None
    if teacher.kind == "openai":
        key = secrets.resolve_key(teacher, ws.id)
        headers = secrets.resolve_headers(teacher, ws.id)
    caps = probe(teacher, key, timeout=args.timeout, headers=headers)
    ws.set_teacher_capabilities(args.name, caps)
    if args.json:
        ctx.print_json(caps)
    else:
        ctx.print_table(["CHECK", "RESULT"], [list(r) for r in summary_lines(caps)])
    ok = (
        caps.get("reachable")
        and caps.get("auth") != "rejected"
        and caps.get("model_exists") is not False
    )
    return 0 if ok else 1
