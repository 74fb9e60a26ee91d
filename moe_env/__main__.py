from moe_env.cli import main

raise SystemExit(main())
