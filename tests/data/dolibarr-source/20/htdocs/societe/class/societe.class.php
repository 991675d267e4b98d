<?php
class Societe extends CommonObject
{
	public function create($user)
	{
		return $this->call_trigger('COMPANY_CREATE', $user);
	}
}
