"""The request pipeline: validation and cost, admission, batching, the decode loop. Knows
nothing of HTTP; imports model/ and imaging/."""
