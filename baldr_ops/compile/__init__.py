"""Compile once, start everywhere: precompiled bundles and compile-cache warmth (issue 7).

`bundle` holds the manifest, hashing, export, verification and the launch hook
(`plan_with_bundle`); `warmth` answers "is MAX's compile cache warm for this model?".
"""
