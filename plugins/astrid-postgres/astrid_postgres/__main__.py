"""``python -m astrid_postgres migrate``: apply the schema migrations as the schema's owner.

Applications open the store with a role that may only read and write rows; the owner applies
new migrations once per upgrade, before the applications restart::

    python -m astrid_postgres migrate --dsn "host=db user=astrid_owner dbname=astrid" \\
        --schema astrid --password-env ASTRID_PG_OWNER_PASSWORD
    python -m astrid_postgres migrate --config owner.toml   # its [storage.options]
"""

from __future__ import annotations

import argparse
import sys

from astrid.errors import AstridError
from astrid.plugins import PluginContext

from . import PostgresOptions, create_backend


def _options(args: argparse.Namespace) -> tuple[PostgresOptions, PluginContext]:
    from astrid.config import astrid_home, load_config

    if args.config is not None:
        loaded = load_config(args.config)
        if loaded.config.storage.backend != "postgres":
            raise AstridError(
                f"{loaded.where}: key 'storage.backend' is {loaded.config.storage.backend!r}, "
                "not 'postgres'"
            )
        options = PostgresOptions.model_validate(loaded.config.storage.options)
        return options, PluginContext(home=loaded.home)
    options = PostgresOptions.model_validate(
        {
            "dsn": args.dsn,
            "schema": args.schema,
            "password_env": args.password_env,
            "password_file": args.password_file,
            "min_size": 0,
            "max_size": 1,
        }
    )
    return options, PluginContext(home=astrid_home())


def main(argv: list[str] | None = None) -> int:
    """Apply the missing migrations and print the applied ones."""
    parser = argparse.ArgumentParser(prog="python -m astrid_postgres")
    commands = parser.add_subparsers(dest="command", required=True)
    migrate = commands.add_parser("migrate", help="apply the missing schema migrations")
    source = migrate.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="an astrid TOML file whose storage is postgres")
    source.add_argument("--dsn", help="a libpq connection string (best without the password)")
    migrate.add_argument("--schema", default="astrid", help="the schema (default: astrid)")
    secret = migrate.add_mutually_exclusive_group()
    secret.add_argument("--password-env", help="an environment variable holding the password")
    secret.add_argument("--password-file", help="a file holding the password")
    args = parser.parse_args(argv)
    try:
        options, context = _options(args)
        backend = create_backend(options, context)
        try:
            applied = backend.migrations()
        finally:
            backend.close()
    except (AstridError, ValueError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(f"{backend.where}: schema version {len(applied)}")
    for name, when in applied:
        print(f"  {name}  applied {when}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
