"""`python -m sde_gen.export`: runs the app `sde_gen.apps.export` (sde-gen-export)."""
if __name__ == "__main__":
    from sde_gen.apps.export import main

    raise SystemExit(main())
