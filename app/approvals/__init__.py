"""The public approvals surface: the signed webhook, the inbox and its approvers' credentials."""
