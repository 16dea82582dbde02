"""`python -m remediation` is the same as the `selinux-remediator` console script."""

from remediation.cli import main

raise SystemExit(main())
