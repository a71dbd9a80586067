from gpulock.cli import main

raise SystemExit(main())
