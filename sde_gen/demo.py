"""`python -m sde_gen.demo`: runs the app `sde_gen.apps.demo` (no console script)."""
if __name__ == "__main__":
    from sde_gen.apps.demo import main

    raise SystemExit(main())
