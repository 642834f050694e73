"""`python -m sde_gen.report`: runs the app `sde_gen.apps.report` (sde-gen-report)."""
if __name__ == "__main__":
    from sde_gen.apps.report import main

    raise SystemExit(main())
