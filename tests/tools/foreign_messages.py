"""What a foreign publisher may store on a job's subjects, for the tests that make sure nothing
of it stops or fools a service."""

JUNK = b"{not json"
