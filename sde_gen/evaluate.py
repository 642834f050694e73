"""`python -m sde_gen.evaluate`: runs the app `sde_gen.apps.evaluate` (sde-gen-eval)."""
if __name__ == "__main__":
    from sde_gen.apps.evaluate import main

    raise SystemExit(main())
