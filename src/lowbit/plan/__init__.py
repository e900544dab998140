"""Plan stage: which nodes run in integers (selection), the QuantPlan, the planner, clipping and
region choices, and the plan's schema."""
