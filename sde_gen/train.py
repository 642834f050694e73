"""`python -m sde_gen.train`: runs the app `sde_gen.apps.train` (sde-gen-train)."""
if __name__ == "__main__":
    from sde_gen.apps.train import main

    raise SystemExit(main())
