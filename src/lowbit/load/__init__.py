"""Load stage: a path, ModelProto or torch module becomes a checked, prepared ModelProto."""
